"""CIFAR-10 for the class-removal case study (paper §2.6), from its official or image-folder form.

Sources: the official `cifar-10-python.tar.gz` (pickled batches, read with an unpickler that admits
only numpy's array reconstruction), or an image-folder layout `train/<class>/*.{jpg,png}` and
`test/<class>/*` as a folder or a `.zip` (the staged JPEG copy; see SOURCES.md). Decoding happens once;
the uint8 arrays are cached as .npz in a writable folder, keyed by the source's path, size and mtime.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modmask.data.root import data_root, fetch, file_key, save_npz, sha256_of, writable_dir

log = logging.getLogger(__name__)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# Known checksums by file name; "auto" in load_cifar10 checks these, other names are not checked.
KNOWN_SHA256 = {
    "cifar-10-python.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    "cifar10-jpeg.zip": "05b4c8c8bf43c21250b5d4abc4621c4fed6837d691555b00c9215bfc6b363d11",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
# numpy pickles an array as _reconstruct(ndarray, shape, dtype) + state; nothing else is needed.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts, lists, bytes, numpy arrays) and refuses any other global,
    so a tampered archive cannot run code while being read."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        raise pickle.UnpicklingError(f"refusing global {module}.{name}: a CIFAR batch holds only "
                                     "dicts, lists, bytes and numpy arrays")


def _unpickle(data: bytes) -> dict:
    # encoding="bytes": the official batches are Python 2 pickles with byte-string keys.
    return BatchUnpickler(io.BytesIO(data), encoding="bytes").load()


def _decode_tar(path: Path) -> dict[str, np.ndarray]:
    """Official batches -> arrays; `data` rows are 3072 = 3x32x32 channel-major, hence the transpose."""
    wanted = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    with tarfile.open(path, "r:gz") as tar:
        # Read members in memory by base name: nothing is extracted, so member paths are harmless.
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        arrays = {}
        for split, names in wanted.items():
            images, labels = [], []
            for name in names:
                if name not in members:
                    raise ValueError(f"{path}: batch {name} is missing; not a CIFAR-10 python archive")
                batch = _unpickle(tar.extractfile(members[name]).read())
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
            arrays[f"{split}_images"] = np.concatenate(images).transpose(0, 2, 3, 1).copy()
            arrays[f"{split}_labels"] = np.concatenate(labels)
    arrays["classes"] = np.array(CLASSES)
    return arrays


def _class_order(names: set[str]) -> list[str]:
    """The official CIFAR order when the folders are the 10 CIFAR classes, else alphabetical."""
    return list(CLASSES) if names == set(CLASSES) else sorted(names)


def _decode_images(path: Path, names: list[str], read) -> dict[str, np.ndarray]:
    """names: '[...]/split/class/file' entries; read(name) -> the bytes of that image."""
    by_split = {s: {} for s in SPLITS}
    for name in sorted(names):
        split, label, _ = name.split("/")[-3:]
        by_split[split].setdefault(label, []).append(name)
    for split in SPLITS:
        if not by_split[split]:
            raise ValueError(f"{path}: no images under a '{split}/<class>/' folder")
    if set(by_split["train"]) != set(by_split["test"]):
        raise ValueError(f"{path}: the train and test class folders differ")
    classes = _class_order(set(by_split["train"]))
    arrays = {"classes": np.array(classes)}
    for split in SPLITS:
        # Sorted by class, then file name, so the order (and so the cache) is reproducible.
        names = [n for label in classes for n in by_split[split][label]]
        images = np.empty((len(names), 32, 32, 3), dtype=np.uint8)
        for i, name in enumerate(names):
            with Image.open(io.BytesIO(read(name))) as image:
                if image.size != (32, 32):
                    raise ValueError(f"{path}: {name} is {image.size}, expected 32x32")
                images[i] = np.asarray(image.convert("RGB"))
        counts = [len(by_split[split][label]) for label in classes]
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return arrays


def _image_names(names: list[str]) -> list[str]:
    """Keep '.../split/class/file.jpg' entries (any leading folder), drop others (e.g. __MACOSX)."""
    keep = []
    for name in names:
        parts = name.split("/")
        if (len(parts) >= 3 and parts[-3] in SPLITS and name.lower().endswith(IMAGE_SUFFIXES)
                and "__MACOSX" not in parts):
            keep.append(name)
    return keep


def _decode_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:  # read entry by entry: nothing is extracted to disk
        names = _image_names(archive.namelist())
        return _decode_images(path, names, archive.read)


def _decode_folder(path: Path) -> dict[str, np.ndarray]:
    names = _image_names([p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()])
    return _decode_images(path, names, lambda name: (path / name).read_bytes())


def _decode(source: Path, expected_sha256: str | None) -> dict[str, np.ndarray]:
    """Decode any source into arrays; every way an archive can be broken becomes a ValueError."""
    if expected_sha256 is not None and source.is_file() and sha256_of(source) != expected_sha256:
        raise ValueError(f"{source} is corrupt: its sha256 is not the expected {expected_sha256}")
    try:
        if source.is_dir():
            return _decode_folder(source)
        if source.name.endswith((".tar.gz", ".tgz")):
            return _decode_tar(source)
        if source.suffix == ".zip":
            return _decode_zip(source)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, pickle.UnpicklingError,
            KeyError, TypeError) as error:
        raise ValueError(f"{source} is corrupt or not CIFAR-10 ({type(error).__name__}: {error})") from error
    raise ValueError(f"{source}: unknown CIFAR-10 source (expected .tar.gz, .zip or a folder)")


def find_source(root: Path, download: bool = True) -> Path:
    """The official tar, else `CIFAR-10/cifar10-jpeg.zip`, else a `CIFAR-10/` folder with train/ and
    test/ (in `root`, then in its writable copy); if none, download the official tar."""
    writable = writable_dir(root)
    for base in dict.fromkeys([root, writable]):
        for candidate in (base / "cifar-10-python.tar.gz", base / "CIFAR-10" / "cifar10-jpeg.zip"):
            if candidate.is_file():
                return candidate
        folder = base / "CIFAR-10"
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    missing = (f"CIFAR-10 not found in {root}: put cifar-10-python.tar.gz there (or "
               f"CIFAR-10/cifar10-jpeg.zip, or CIFAR-10/train/ and test/ image folders), or set the "
               f"MODMASK_DATA environment variable to a folder that holds one of them.")
    if not download:
        raise FileNotFoundError(missing)
    try:
        return fetch(OFFICIAL_URL, writable / "cifar-10-python.tar.gz", KNOWN_SHA256["cifar-10-python.tar.gz"])
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{missing} ({error})") from error


def load_cifar10(root: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
                 expected_sha256: str | None = "auto", download: bool = True) -> dict:
    """{"train": (images, labels), "test": (images, labels), "classes": [10 names]}:
    images uint8 [N, 32, 32, 3] (HWC, RGB), labels int64 [N].

    `expected_sha256="auto"` checks the known checksum of the official tar or the staged zip
    (by file name); None skips the check. It runs only when decoding, not on a cache hit.
    """
    root = data_root(root)
    source = Path(source) if source is not None else find_source(root, download)
    if not source.exists():
        raise FileNotFoundError(f"CIFAR-10 source {source} does not exist")
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    if expected_sha256 == "auto":
        expected_sha256 = None if source.is_dir() else KNOWN_SHA256.get(source.name)
    # The checksum setting is part of the key: an unchecked decode must not satisfy a checked load.
    cache = writable_dir(root) / "cache" / f"cifar10-{file_key(files, source.resolve(), expected_sha256)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    else:
        log.info("decoding CIFAR-10 from %s (once: cached as %s)", source, cache)
        arrays = _decode(source, expected_sha256)
        save_npz(cache, arrays)
    result = {split: (torch.from_numpy(arrays[f"{split}_images"]), torch.from_numpy(arrays[f"{split}_labels"]))
              for split in SPLITS}
    result["classes"] = [str(name) for name in arrays["classes"]]
    return result


def channel_stats(images: torch.Tensor, chunk: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean [3], std [3]) of uint8 images [N, 32, 32, 3] on the 0-1 scale, accumulated
    in float64 chunks (a float copy of 50k images would take 600 MB). Same normalisation as the
    paper's 0-255 statistics, since both scale x and the statistics by 255."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 3).double() / 255
        total += x.sum(0)
        squares += (x * x).sum(0)
    count = images[..., 0].numel()
    mean = total / count
    return mean.float(), (squares / count - mean * mean).clamp_min(0).sqrt().float()


class ImageClassData:
    """Images uint8 [N, 32, 32, 3] with labels int64 [N]; mean/std: per-channel [3] on the 0-1
    scale (e.g. `channel_stats(train_images)`). Kept as uint8, normalised per batch, to save memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images, self.labels = images, labels
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """index (int64 tensor or slice) -> (inputs float [n, 3, 32, 32], labels int64 [n])."""
        x = self.images[index].permute(0, 3, 1, 2).float() / 255
        return (x - self.mean) / self.std, self.labels[index]
