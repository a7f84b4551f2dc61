"""DeepMind Mathematics: the archive layout on tiny files, the paper's splits, and generation."""

import pytest

from modmask.data import dm_math_generate
from modmask.data.dm_math import char_vocabulary, read_module, split_module
from modmask.data.scan import ScanData


def _write(root, name, pairs, module="algebra__linear_1d"):
    path = root / name / f"{module}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{q}\n{a}\n" for q, a in pairs))


def test_archive_layout_deduplication_and_held_out_sets(tmp_path):
    root = tmp_path / "mathematics_dataset-v1.0"  # the folder above it is accepted too
    easy = [(f"Solve {i}*x = {i} for x.", "1") for i in range(1, 21)]
    _write(root, "train-easy", easy + [easy[0]])  # a repeat inside one file
    _write(root, "train-medium", [easy[3], ("Solve 2*y = 8 for y.", "4")])  # one seen in train-easy
    _write(root, "train-hard", [(f"Solve {i}*z = {3 * i} for z.", "3") for i in range(1, 11)])
    _write(root, "interpolate", [("Solve 5*q = 10 for q.", "2")])
    files = read_module(tmp_path, "algebra__linear_1d")
    assert set(files) == {"train-easy", "train-medium", "train-hard", "interpolate"}
    sets = split_module(files, held_out=4)
    assert len(sets["test_easy"]) == 4 and len(sets["train_easy"]) == 16
    assert sets["train_medium"] + sets["test_medium"] == [("Solve 2*y = 8 for y.", "4")]  # only the new one
    assert len(sets["test_hard"]) == 4 and len(sets["train_hard"]) == 6
    assert not set(sets["test_hard"]) & set(sets["train_hard"])
    assert split_module(files, held_out=4) == sets  # RandomState(1234): the same sets every time
    vocab = char_vocabulary(sets)
    assert vocab.in_words == vocab.out_words and list(vocab.in_words) == sorted(vocab.in_words)
    (src, src_len), (tgt, tgt_len) = ScanData(sets["train_hard"], vocab).encode(slice(0, 2))
    question, answer = sets["train_hard"][0]
    assert vocab.decode_in(src[0].tolist()) == list(question) and int(src_len[0]) == len(question) + 1
    assert vocab.decode_out(tgt[0].tolist()) == list(answer)


def test_missing_and_truncated_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-easy.*--set data=PATH"):
        read_module(tmp_path, "algebra__linear_1d")
    _write(tmp_path, "train-easy", [("a", "b")])
    _write(tmp_path, "train-medium", [("c", "d")])
    (tmp_path / "train-hard").mkdir()
    (tmp_path / "train-hard" / "algebra__linear_1d.txt").write_text("question without answer\n")
    with pytest.raises(ValueError, match="train-hard.*alternate lines"):
        read_module(tmp_path, "algebra__linear_1d")


def test_generation_writes_the_released_layout_seeded_and_cached(tmp_path):
    out = dm_math_generate.generate("comparison__sort", tmp_path / "gen", per_train=6, per_test=3, seed=5)
    files = read_module(out, "comparison__sort")
    assert [len(files[name]) for name in ("train-easy", "train-medium", "train-hard", "interpolate")] == [6, 6, 6, 3]
    assert all("order" in q or "Sort" in q for q, _ in files["train-easy"])
    again = dm_math_generate.generate("comparison__sort", tmp_path / "other", per_train=6, per_test=3, seed=5)
    assert read_module(again, "comparison__sort") == files  # same seed, same examples
    easy = out / "train-easy" / "comparison__sort.txt"
    easy.write_text("kept\nas is\n")  # an existing file is a cache hit, never regenerated
    dm_math_generate.generate("comparison__sort", out, per_train=6, per_test=3, seed=5)
    assert easy.read_text() == "kept\nas is\n"


def test_polynomial_modules_run_with_the_compatibility_patch():
    generators = dm_math_generate.regime_generators("polynomials__collect")  # needs the patched module
    pairs = dm_math_generate.sample(generators["train-hard"], 3, seed=1)
    assert len(pairs) == 3 and all(q and a for q, a in pairs)
    with pytest.raises(KeyError, match="unknown DeepMind Mathematics module 'algebra__nothing'"):
        dm_math_generate.regime_generators("algebra__nothing")


def test_a_changed_package_source_fails_loudly():
    with pytest.raises(ImportError, match="mathematics-dataset==1.0.1"):
        dm_math_generate._patched_source("import numpy as np\n", "polynomials.py")
