import collections
import io
import os
import pickle
import struct
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modmask.data import cifar
from modmask.data.cifar import CLASSES, ImageClassData, channel_stats, load_cifar10
from modmask.data.sampling import RandomBatches

STAGED_ZIP = Path("/work/shared/datasets/CIFAR-10/cifar10-jpeg.zip")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MODMASK_DATA", raising=False)


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` opcodes, and names numpy.core (not numpy._core):
    the shape of the official batches, which Python 2's cPickle wrote."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        obj = obj.encode() if isinstance(obj, str) else obj
        short = len(obj) < 256
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) if short
                   else pickle.BINSTRING + struct.pack("<i", len(obj)))
        self.write(obj)

    dispatch[bytes] = dispatch[str] = save_py2_str


def py2_pickle(obj) -> bytes:
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def fake_tar(path: Path, members: dict[str, bytes] | None = None) -> dict:
    """A cifar-10-python.tar.gz with 2 images per training batch and 3 test images."""
    rng = np.random.RandomState(0)
    sizes = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    batches = {name: {b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
                      b"labels": rng.randint(0, 10, n).tolist(), b"batch_label": name.encode()}
               for name, n in sizes.items()}
    members = members or {name: py2_pickle(batch) for name, batch in batches.items()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return batches


def png(colour: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (colour, 255 - colour, 7)).save(out, format="PNG")
    return out.getvalue()


def image_files(classes, per_split=(2, 1)) -> dict[str, bytes]:
    """'split/class/NNNN.png' -> PNG whose red channel encodes (class index, file number)."""
    files = {}
    for split, count in zip(("train", "test"), per_split):
        for c, name in enumerate(classes):
            for i in range(count):
                files[f"{split}/{name}/{i:04d}.png"] = png(c * 10 + i)
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(files, reverse=True):  # archive order must not matter
            archive.writestr(name, files[name])


def test_official_tar_layout(tmp_path):
    batches = fake_tar(tmp_path / "cifar-10-python.tar.gz")
    data = load_cifar10(tmp_path, expected_sha256=None)
    images, labels = data["train"]
    assert images.dtype == torch.uint8 and images.shape == (10, 32, 32, 3)
    assert labels.dtype == torch.int64 and data["test"][0].shape == (3, 32, 32, 3)
    assert labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    # Rows are channel-major 3x32x32; the loader returns HWC.
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(images[0].numpy(), first)
    assert data["classes"] == CLASSES


def test_tar_checksum_is_checked_by_default(tmp_path):
    fake_tar(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz is corrupt: its sha256"):
        load_cifar10(tmp_path)


def test_corrupt_and_incomplete_tars(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball at all")
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz is corrupt or not CIFAR-10"):
        load_cifar10(tmp_path, expected_sha256=None)
    partial = tmp_path / "partial" / "cifar-10-python.tar.gz"
    partial.parent.mkdir()
    fake_tar(partial, {"data_batch_1": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})})
    with pytest.raises(ValueError, match="data_batch_2 is missing"):
        load_cifar10(tmp_path / "partial", expected_sha256=None)


def test_unpickler_refuses_foreign_globals(tmp_path):
    class Exploit:
        def __reduce__(self):
            return os.system, ("echo should never run",)

    evil = py2_pickle({b"data": Exploit(), b"labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global (posix|os)\.system"):
        cifar._unpickle(evil)
    fake_tar(tmp_path / "cifar-10-python.tar.gz", {f"data_batch_{i}": evil for i in range(1, 6)})
    with pytest.raises(ValueError, match="refusing global"):
        load_cifar10(tmp_path, expected_sha256=None)
    # numpy arrays themselves are admitted, as Python 2 wrote them and as Python 3 does (numpy._core).
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for data in (py2_pickle({b"data": array}), pickle.dumps({b"data": array}, protocol=4)):
        assert np.array_equal(cifar._unpickle(data)[b"data"], array)


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_image_folder_layouts_use_the_official_class_order(tmp_path, layout):
    shuffled = ["truck", "bird", "airplane", "ship", "cat", "deer", "dog", "frog", "horse", "automobile"]
    files = image_files(shuffled)
    if layout == "zip":
        write_zip(tmp_path / "CIFAR-10" / "cifar10-jpeg.zip", files)
    else:
        for name, data in files.items():
            (tmp_path / "CIFAR-10" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "CIFAR-10" / name).write_bytes(data)
    data = load_cifar10(tmp_path, expected_sha256=None)
    assert data["classes"] == CLASSES
    images, labels = data["train"]
    assert images.shape == (20, 32, 32, 3) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    # Sorted by class, then file name: image 2*k + i is file i of class CLASSES[k].
    expected_red = [shuffled.index(name) * 10 + i for name in CLASSES for i in range(2)]
    assert images[:, 0, 0, 0].tolist() == expected_red
    assert data["test"][1].tolist() == list(range(10))


def test_other_class_names_are_sorted(tmp_path):
    write_zip(tmp_path / "mine.zip", image_files(["zebra", "apple", "mango"]))
    data = load_cifar10(tmp_path, source=tmp_path / "mine.zip")
    assert data["classes"] == ["apple", "mango", "zebra"]
    assert data["train"][1].tolist() == [0, 0, 1, 1, 2, 2]
    assert data["train"][0][:, 0, 0, 0].tolist() == [10, 11, 20, 21, 0, 1]


def test_broken_zips_are_clear_errors(tmp_path):
    bad = tmp_path / "CIFAR-10" / "cifar10-jpeg.zip"
    bad.parent.mkdir()
    bad.write_bytes(b"PK but not really a zip")
    with pytest.raises(ValueError, match=r"cifar10-jpeg\.zip is corrupt or not CIFAR-10.*BadZipFile"):
        load_cifar10(tmp_path, expected_sha256=None)
    only_train = {k: v for k, v in image_files(["a", "b"]).items() if k.startswith("train/")}
    write_zip(tmp_path / "train_only.zip", only_train)
    with pytest.raises(ValueError, match=r"train_only\.zip: no images under a 'test/<class>/' folder"):
        load_cifar10(tmp_path, source=tmp_path / "train_only.zip")
    write_zip(tmp_path / "staged" / "CIFAR-10" / "cifar10-jpeg.zip", image_files(["a", "b"]))
    load_cifar10(tmp_path / "staged", expected_sha256=None)  # an unchecked cache must not count
    with pytest.raises(ValueError, match="is corrupt: its sha256 is not the expected 05b4c8"):
        load_cifar10(tmp_path / "staged")  # named like the staged zip: its known checksum applies


def test_source_order_and_cache_reuse(tmp_path, monkeypatch):
    batches = fake_tar(tmp_path / "cifar-10-python.tar.gz")
    write_zip(tmp_path / "CIFAR-10" / "cifar10-jpeg.zip", image_files(["a", "b"]))
    first = load_cifar10(tmp_path, expected_sha256=None)
    assert first["train"][1].tolist()[:2] == batches["data_batch_1"][b"labels"]  # the tar wins
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cifar, "_decode", no_decoding)
    second = load_cifar10(tmp_path, expected_sha256=None)
    assert all(torch.equal(a, b) for s in ("train", "test") for a, b in zip(first[s], second[s]))
    assert second["classes"] == CLASSES


def test_missing_offline_names_modmask_data(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*MODMASK_DATA"):
        load_cifar10(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="MODMASK_DATA"):
        load_cifar10(tmp_path / "empty", download=False)


def test_image_class_data_normalises_per_channel():
    images = torch.randint(0, 256, (12, 32, 32, 3), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=5)
    x = images.permute(0, 3, 1, 2).double() / 255
    assert torch.allclose(mean.double(), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(std.double(), x.std((0, 2, 3), correction=0), atol=1e-6)
    data = ImageClassData(images, torch.arange(12) % 10, mean, std)
    inputs, labels = data.encode(torch.tensor([0, 5]))
    assert inputs.shape == (2, 3, 32, 32) and inputs.dtype == torch.float32 and labels.tolist() == [0, 5]
    whole, _ = data.encode(slice(None))
    assert whole.mean((0, 2, 3)).abs().max() < 1e-4 and (whole.std((0, 2, 3), correction=0) - 1).abs().max() < 1e-4
    assert next(RandomBatches(data, 4, seed=0))[0].shape == (4, 3, 32, 32)


@pytest.mark.skipif(not STAGED_ZIP.is_file(), reason="staged CIFAR-10 zip not present")
def test_staged_zip_layout_without_decoding():
    with zipfile.ZipFile(STAGED_ZIP) as archive:
        names = cifar._image_names(archive.namelist())
    counts = collections.Counter(tuple(n.split("/")[:2]) for n in names)
    assert len(names) == 60000 and {c for _, c in counts} == set(CLASSES)
    assert all(counts["train", c] == 5000 and counts["test", c] == 1000 for c in CLASSES)


def test_data_modules_import_no_upper_layers():
    import ast

    from modmask.data import mnist, root

    for module in (cifar, mnist, root):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert all(not name.startswith("modmask.") or name.startswith("modmask.data") for name in imported)
