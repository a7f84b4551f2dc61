import hashlib
import urllib.error
import urllib.request

import numpy as np
import pytest

from modmask.data import root as root_module
from modmask.data.root import data_root, fetch, file_key, save_npz, sha256_of, user_cache, writable_dir


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MODMASK_DATA", raising=False)


def test_data_root_order(tmp_path, monkeypatch):
    assert data_root() == tmp_path / "xdg" / "modmask" == user_cache()
    monkeypatch.setenv("MODMASK_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache() == tmp_path / "home" / ".cache" / "modmask"


def test_writable_dir_falls_back_for_read_only_roots(tmp_path):
    assert writable_dir(tmp_path / "new") == tmp_path / "new" and (tmp_path / "new").is_dir()
    # A root that cannot be created (a file is in the way) -> the user cache.
    (tmp_path / "file").write_text("x")
    assert writable_dir(tmp_path / "file" / "sub") == user_cache()
    # No write bits -> read-only, even when running as root.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert writable_dir(locked) == user_cache()
    finally:
        locked.chmod(0o755)


def test_sha256_of_streams_the_file(tmp_path):
    data = np.random.RandomState(0).bytes(3 * (1 << 20) + 7)  # more than one chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_of(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_fetch_downloads_verifies_and_renames(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    target = tmp_path / "out" / "file.bin"
    digest = hashlib.sha256(b"payload").hexdigest()
    assert fetch(source.as_uri(), target, digest) == target
    assert target.read_bytes() == b"payload"
    # A wrong checksum leaves neither the target nor a partial file.
    with pytest.raises(ValueError, match="sha256"):
        fetch(source.as_uri(), tmp_path / "bad" / "file.bin", "0" * 64)
    assert list((tmp_path / "bad").iterdir()) == []


def test_fetch_offline_names_file_place_and_variable(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    target = tmp_path / "data" / "thing.gz"
    with pytest.raises(FileNotFoundError) as info:
        fetch("https://example.invalid/thing.gz", target, None)
    message = str(info.value)
    assert "thing.gz" in message and str(target) in message and "MODMASK_DATA" in message
    assert list(target.parent.iterdir()) == []


def test_save_npz_is_atomic_and_keys_change_with_files(tmp_path):
    save_npz(tmp_path / "c" / "a.npz", {"x": np.arange(3)})
    with np.load(tmp_path / "c" / "a.npz") as saved:
        assert saved["x"].tolist() == [0, 1, 2]
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["a.npz"]
    f = tmp_path / "f"
    f.write_text("1")
    key = file_key([f], "v")
    assert key == file_key([f], "v") != file_key([f], "w")
    f.write_text("22")
    assert file_key([f], "v") != key


def test_root_module_imports_no_upper_layers():
    source = open(root_module.__file__).read()
    assert "modmask.core" not in source and "experiments" not in source
