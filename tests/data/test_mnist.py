import gzip
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from modmask.data import mnist
from modmask.data.mnist import (
    PermutedMNIST, load_mnist, normalise, permuted_mnist_tasks, read_idx, train_valid_split,
)
from modmask.data.sampling import RandomBatches, fixed_batches

STAGED = Path("/work/shared/datasets")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MODMASK_DATA", raising=False)


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x800 | array.ndim
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def tiny_mnist(folder: Path, gz: bool, seed: int = 0) -> dict:
    """Write a 5-image train and test IDX pair; return the arrays."""
    rng = np.random.RandomState(seed)
    arrays = {"train": (rng.randint(0, 256, (5, 28, 28)), np.array([3, 1, 4, 1, 5])),
              "test": (rng.randint(0, 256, (5, 28, 28)), np.array([9, 2, 6, 5, 3]))}
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, array, dims in (("images", arrays[split][0], 3), ("labels", arrays[split][1], 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            data = idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


def check_loaded(loaded, arrays):
    for split in ("train", "test"):
        images, labels = loaded[split]
        assert images.dtype == torch.uint8 and images.shape == (5, 28, 28)
        assert labels.dtype == torch.int64 and labels.shape == (5,)
        assert torch.equal(images, torch.from_numpy(arrays[split][0].astype(np.uint8)))
        assert labels.tolist() == arrays[split][1].tolist()


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("in_raw", [True, False])
def test_reads_gzipped_and_plain_idx(tmp_path, gz, in_raw):
    arrays = tiny_mnist(tmp_path / "MNIST" / "raw" if in_raw else tmp_path, gz)
    check_loaded(load_mnist(tmp_path, verify=False), arrays)


def test_second_load_uses_the_cache(tmp_path, monkeypatch):
    arrays = tiny_mnist(tmp_path / "MNIST" / "raw", gz=True)
    load_mnist(tmp_path, verify=False)
    assert len(list((tmp_path / "cache").glob("mnist-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(mnist, "_decode", no_decoding)
    check_loaded(load_mnist(tmp_path, verify=False), arrays)


def test_read_only_root_caches_in_the_user_folder(tmp_path):
    data = tmp_path / "data"
    arrays = tiny_mnist(data / "MNIST" / "raw", gz=True)
    data.chmod(0o555)  # no write bits: treated as read-only even when tests run as root
    try:
        check_loaded(load_mnist(data, verify=False), arrays)
    finally:
        data.chmod(0o755)
    assert not (data / "cache").exists()
    assert len(list((tmp_path / "xdg" / "modmask" / "cache").glob("mnist-*.npz"))) == 1


def test_non_canonical_content_is_rejected(tmp_path):
    tiny_mnist(tmp_path / "MNIST" / "raw", gz=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is corrupt or not MNIST"):
        load_mnist(tmp_path)


def test_bad_header_and_truncation_are_clear_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28)))
    (tmp_path / "labels").write_bytes(good)
    with pytest.raises(ValueError, match="labels is corrupt or not MNIST.*magic"):
        read_idx(tmp_path / "labels", 0x801)
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="short is corrupt or not MNIST.*header"):
        read_idx(tmp_path / "short", 0x803)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(ValueError, match="broken.gz is corrupt"):
        read_idx(tmp_path / "broken.gz", 0x803)


def test_missing_files_offline_raise_with_instructions(tmp_path, monkeypatch):
    urls = []

    def offline(url, *args, **kwargs):
        urls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="MODMASK_DATA") as info:
        load_mnist(tmp_path / "empty")
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert urls == [mnist.MIRROR + "train-images-idx3-ubyte.gz"]
    with pytest.raises(FileNotFoundError, match="MODMASK_DATA"):
        load_mnist(tmp_path / "empty", download=False)


def test_missing_files_are_downloaded_from_the_mirror(tmp_path, monkeypatch):
    arrays = tiny_mnist(tmp_path / "mirror", gz=True)
    monkeypatch.setattr(mnist, "MIRROR", (tmp_path / "mirror").as_uri() + "/")
    check_loaded(load_mnist(tmp_path / "data", verify=False), arrays)
    assert len(list((tmp_path / "data" / "MNIST" / "raw").glob("*.gz"))) == 4


def test_permutations_are_the_papers():
    tasks = permuted_mnist_tasks(3)
    assert len(tasks) == 3 and all(t.dtype == torch.int64 and t.shape == (784,) for t in tasks)
    assert torch.equal(tasks[0], torch.arange(784))
    assert tasks[1].tolist() == np.random.RandomState(1).permutation(784).tolist()
    assert not torch.equal(tasks[1], tasks[2])
    assert all(torch.equal(t.sort().values, torch.arange(784)) for t in tasks)
    assert torch.equal(permuted_mnist_tasks(3)[2], tasks[2])  # deterministic
    assert len(permuted_mnist_tasks(1)) == 1 and permuted_mnist_tasks(0) == []


def test_train_valid_split_rule():
    train, valid = train_valid_split(1000)
    expected = np.random.RandomState(0xC1CAFA52).rand(1000) > 0.2
    assert train.tolist() == np.flatnonzero(expected).tolist()
    assert sorted(train.tolist() + valid.tolist()) == list(range(1000))
    assert 750 < len(train) < 850


def test_normalise_and_permuted_dataset():
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    x, mean, std = normalise(images)
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-4
    again, m2, s2 = normalise(images[:4], mean, std)
    assert (m2, s2) == (mean, std) and torch.allclose(again, x[:4])
    labels = torch.arange(20) % 10
    permutation = permuted_mnist_tasks(2)[1]
    data = PermutedMNIST(x, labels, permutation)
    inputs, targets = data.encode(torch.tensor([3, 7]))
    assert inputs.shape == (2, 784) and targets.tolist() == [3, 7]
    assert torch.equal(inputs[1], x[7].flatten()[permutation])
    batch_inputs, batch_labels = next(RandomBatches(data, 8, seed=0))
    assert batch_inputs.shape == (8, 784) and batch_labels.shape == (8,)
    assert sum(len(b[1]) for b in fixed_batches(data, 6)) == 20
    with pytest.raises(TypeError, match="normalised"):
        PermutedMNIST(images, labels, permutation)


@pytest.mark.skipif(not (STAGED / "MNIST" / "raw").is_dir(), reason="staged MNIST not present")
def test_real_mnist_matches_sources_md():
    before = sorted(STAGED.rglob("*"))
    data = load_mnist(STAGED)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert torch.bincount(train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert abs(train_x.double().mean().item() / 255 - 0.1307) < 1e-4
    assert sorted(STAGED.rglob("*")) == before  # read-only input: the cache went elsewhere
    assert len(list((Path(os.environ["XDG_CACHE_HOME"]) / "modmask" / "cache").glob("mnist-*.npz"))) == 1
