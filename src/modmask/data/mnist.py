"""MNIST from its IDX files, and the permuted-MNIST tasks of the paper (§2.7).

The four standard IDX files (gzipped or plain) are read from `<root>/MNIST/raw/` or `<root>/`.
Their decompressed content is checked against the canonical sha256 values (SOURCES.md): the .gz
bytes differ between mirrors (gzip headers), the content does not. Decoded, verified arrays are
cached as .npz in a writable folder, so later loads skip decompression and verification.
Task p of permuted MNIST applies `RandomState(p).permutation(784)` to the pixels (task 0: identity);
train/validation is the paper's `RandomState(0xC1CAFA52).rand(n) > 0.2` split (also used in §2.6).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from pathlib import Path

import numpy as np
import torch

from modmask.data.root import data_root, fetch, file_key, save_npz, writable_dir

log = logging.getLogger(__name__)
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
SPLIT_SEED = 0xC1CAFA52
PIXELS = 28 * 28

# (split, kind) -> (file name, IDX magic, sha256 of the decompressed content)
FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", 0x803,
                          "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    ("train", "labels"): ("train-labels-idx1-ubyte", 0x801,
                          "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    ("test", "images"): ("t10k-images-idx3-ubyte", 0x803,
                         "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", 0x801,
                         "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}


def read_idx(path: Path, magic: int, sha256: str | None = None) -> np.ndarray:
    """Parse one IDX file (gzipped or plain) into a uint8 array of the header's dims.

    The header is a big-endian uint32 magic (0x0800 | ndim for uint8 data), then ndim uint32 dims.
    With `sha256`, the decompressed bytes must match it (ValueError naming the file otherwise).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # Sniff the gzip magic rather than trust the extension: a gunzipped file may keep its name.
        content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} is corrupt or not an MNIST IDX file ({error})") from error
    if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
        raise ValueError(f"{path} is corrupt or not MNIST: the sha256 of its content is not the "
                         f"canonical {sha256}. Replace it with the original file.")
    ndim = magic & 0xFF
    if len(content) < 4 + 4 * ndim or struct.unpack(">I", content[:4])[0] != magic:
        raise ValueError(f"{path} is corrupt or not MNIST: expected IDX magic {magic:#x}")
    dims = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is corrupt or not MNIST: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def _find(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / (name + ".gz"), folder / name):
            if candidate.is_file():
                return candidate
    return None


def _locate(root: Path, download: bool) -> dict[tuple[str, str], Path]:
    """Find each IDX file; download missing ones into the writable copy of `<root>/MNIST/raw`."""
    downloads = writable_dir(root) / "MNIST" / "raw"
    folders = [root / "MNIST" / "raw", root, downloads]
    found = {}
    for key, (name, _, _) in FILES.items():
        path = _find(name, folders)
        if path is None:
            if not download:
                raise FileNotFoundError(
                    f"MNIST file {name}(.gz) not found: put it in {root / 'MNIST' / 'raw'}, or set "
                    f"the MODMASK_DATA environment variable to a folder whose MNIST/raw/ holds it.")
            # The mirrors' .gz bytes differ (gzip headers), so no .gz checksum: the content is checked.
            path = fetch(MIRROR + name + ".gz", downloads / (name + ".gz"), None)
        found[key] = path
    return found


def _decode(files: dict[tuple[str, str], Path], verify: bool) -> dict[str, np.ndarray]:
    arrays = {}
    for (split, kind), path in files.items():
        _, magic, sha256 = FILES[split, kind]
        arrays[f"{split}_{kind}"] = read_idx(path, magic, sha256 if verify else None)
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise ValueError(f"MNIST {split} images and labels differ in count")
    return arrays


def load_mnist(root: str | os.PathLike | None = None, verify: bool = True,
               download: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images, labels), "test": (images, labels)}: images uint8 [N, 28, 28],
    labels int64 [N]. `verify=False` skips the canonical checksums (for non-canonical test data)."""
    root = data_root(root)
    files = _locate(root, download)
    key = file_key(list(files.values()), "verified" if verify else "unverified")
    cache = writable_dir(root) / "cache" / f"mnist-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    else:
        log.info("decoding MNIST from %s (once: cached as %s)", files["train", "images"].parent, cache)
        arrays = _decode(files, verify)
        save_npz(cache, arrays)
    # Freshly parsed arrays view the read-only decompressed bytes; torch needs writable memory.
    return {split: (torch.from_numpy(np.require(arrays[f"{split}_images"], requirements="W")),
                    torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)))
            for split in ("train", "test")}


def permuted_mnist_tasks(count: int) -> list[torch.Tensor]:
    """`count` pixel orders, each int64 [784]: task 0 is the identity, task p uses
    RandomState(p).permutation(784) (the paper's seeds, so tasks match the original code)."""
    orders = [torch.arange(PIXELS)]
    orders += [torch.from_numpy(np.random.RandomState(p).permutation(PIXELS)) for p in range(1, count)]
    return orders[:count]


def train_valid_split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, valid_idx), int64 indices into n examples: about 80% / 20%, by the paper's rule
    RandomState(0xC1CAFA52).rand(n) > 0.2 -> train (§2.6, §2.7)."""
    train = np.random.RandomState(SPLIT_SEED).rand(n) > 0.2
    return torch.from_numpy(np.flatnonzero(train)), torch.from_numpy(np.flatnonzero(~train))


def normalise(images: torch.Tensor, mean: float | None = None,
              std: float | None = None) -> tuple[torch.Tensor, float, float]:
    """uint8 images [N, ...] -> (float32 (x/255 - mean) / std, mean, std).

    Without `mean`/`std` they are computed on `images` (pass the training images); give them back
    to normalise the validation or test images with the training statistics.
    """
    x = images.float() / 255
    if mean is None or std is None:
        mean, std = x.mean().item(), x.std().item()
    return (x - mean) / std, mean, std


class PermutedMNIST:
    """One permuted-MNIST task: images float [N, 28, 28] or [N, 784] (already normalised),
    labels int64 [N], permutation int64 [784]. Permuting per batch avoids a copy per task."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, permutation: torch.Tensor):
        if not images.is_floating_point():
            raise TypeError("PermutedMNIST expects normalised float images (see normalise())")
        self.images = images.reshape(len(images), -1)
        self.labels, self.permutation = labels, permutation

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """index (int64 tensor or slice) -> (inputs float [n, 784], labels int64 [n])."""
        return self.images[index][:, self.permutation], self.labels[index]
