"""Where datasets live, how missing files are downloaded, and where decoded arrays are cached.

The data root is resolved as docs/architecture.md ("Data") describes: an explicit option, then the
`MODMASK_DATA` environment variable, then a user cache folder. Input folders may be read-only (the
staged copy in `shared/datasets` is), so decoded caches and downloads go to `writable_dir(root)`,
never next to read-only inputs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

ENV_VAR = "MODMASK_DATA"


def user_cache() -> Path:
    """`$XDG_CACHE_HOME/modmask`, or `~/.cache/modmask`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "modmask"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: `explicit`, else `$MODMASK_DATA`, else `user_cache()`."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return user_cache()


def writable_dir(root: Path) -> Path:
    """`root` if we may write there (creating it if needed), else the user cache folder.

    A folder without any write bit counts as read-only even for root (who passes `os.access`):
    that is how the staged datasets are marked, and CI may run as root.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK) and root.stat().st_mode & 0o222:
            return root
    except OSError:
        pass
    fallback = user_cache()
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (the CIFAR archive is 170 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, target: Path, sha256: str | None) -> Path:
    """Download `url` to `target` and check its sha256 (None: the caller checks the content).

    The download goes to a temporary file beside `target` and is renamed only once complete and
    verified, so an interrupted download never leaves a truncated file that looks valid.
    Offline (any URLError/OSError) raises FileNotFoundError that says where to put the file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, part = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as error:  # urllib.error.URLError is an OSError
        os.unlink(part)
        raise FileNotFoundError(
            f"{target.name} is missing and could not be downloaded from {url} ({error}). "
            f"Put the file at {target}, or set the {ENV_VAR} environment variable (or pass the "
            f"data root option) to a folder that holds it."
        ) from error
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        os.unlink(part)
        raise ValueError(f"download of {target.name} from {url} has sha256 {digest}, expected {sha256}")
    os.replace(part, target)
    return target


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed .npz atomically (temporary file, then rename): a cache read later
    must never be half written. Uncompressed because loading speed is the point of the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, part = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise


def file_key(paths: list[Path], *extra: object) -> str:
    """A short cache key from each file's resolved path, size and mtime (cheap: no reading)."""
    parts = [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths]
    return hashlib.sha256("|".join(parts + [str(e) for e in extra]).encode()).hexdigest()[:16]
