import os
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from modmask.data import scan
from modmask.data.sampling import RandomBatches, fixed_batches
from modmask.data.scan import ScanData, ScanVocabulary, load_split, make_split_files, read_task_file
from modmask.data.scan_grammar import ACTIONS, generate_commands, interpret

L, R = "I_TURN_LEFT", "I_TURN_RIGHT"

# Published sizes (datasets/SOURCES.md).
SIZES = {"simple": (16_728, 4_182), "length": (16_990, 3_920),
         "jump": (14_670, 7_706), "turn_left": (21_890, 1_208)}


def _staged_root() -> Path | None:
    """The staged copy of the datasets (shared/datasets beside or inside the checkout), if any."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "shared" / "datasets", here.parents[3] / "shared" / "datasets"]
    if os.environ.get("MODMASK_DATA"):
        candidates.append(Path(os.environ["MODMASK_DATA"]))
    return next((c for c in candidates if (c / "SCAN" / "tasks.txt").is_file()), None)


STAGED = _staged_root()
needs_staged = pytest.mark.skipif(STAGED is None, reason="staged SCAN files not found")
REAL_FILES = ["tasks.txt"] + [f for pair in scan.SPLITS.values() for f in pair]


def _pairs(commands):
    return [(tuple(c.split()), tuple(interpret(c))) for c in commands]


# ---------------------------------------------------------------- grammar

@pytest.mark.parametrize("command, actions", [
    ("jump", ["I_JUMP"]),
    ("turn left", [L]),
    ("turn opposite left", [L, L]),
    ("turn around right", [R] * 4),
    ("look right thrice", [R, "I_LOOK"] * 3),
    ("jump around left twice", [L, "I_JUMP"] * 8),
    ("walk opposite right after run thrice", ["I_RUN"] * 3 + [R, R, "I_WALK"]),
    ("turn left and look", [L, "I_LOOK"]),
    ("run opposite left twice and turn around right",
     [L, L, "I_RUN", L, L, "I_RUN", R, R, R, R]),
])
def test_interpret_worked_examples(command, actions):
    assert interpret(command) == actions


@pytest.mark.parametrize("command", ["", "turn", "turn twice", "fly", "jump twice twice",
                                     "walk and run and look", "walk opposite", "and walk",
                                     "walk left right", "walk around"])
def test_interpret_rejects_non_commands(command):
    with pytest.raises(ValueError, match="not a SCAN command"):
        interpret(command)


def test_generated_commands_are_seeded_and_cover_the_grammar():
    commands = generate_commands(300, seed=5)
    assert commands == generate_commands(300, seed=5) and commands != generate_commands(300, seed=6)
    words = Counter(w for c in commands for w in c.split())
    for word in ["and", "after", "twice", "thrice", "opposite", "around", "turn", "left", "right",
                 "walk", "look", "run", "jump"]:
        assert words[word] > 0, word
    produced = {a for c in commands for a in interpret(c)}  # all valid, every action reachable
    assert produced == set(ACTIONS)


@needs_staged
@pytest.mark.parametrize("name", REAL_FILES)
def test_interpreter_agrees_with_every_line_of_the_real_files(name):
    start = time.perf_counter()
    pairs = read_task_file(STAGED / "SCAN" / name)
    wrong = [(c, a) for c, a in pairs if interpret(" ".join(c)) != list(a)]
    assert pairs and not wrong, wrong[:3]
    assert time.perf_counter() - start < 20  # every line, not a sample: it is fast enough


# ---------------------------------------------------------------- files

def test_tiny_split_files_round_trip(tmp_path):
    pairs = _pairs(generate_commands(40, seed=1))
    root = make_split_files(tmp_path, pairs)
    for split in scan.SPLITS:
        assert load_split(split, "train", root) == pairs[:30]
        assert load_split(split, "test", root) == pairs[30:]
    line = (tmp_path / "SCAN" / scan.SPLITS["jump"][0]).read_text().splitlines()[0]
    command, actions = pairs[0]
    assert line == f"IN: {' '.join(command)} OUT: {' '.join(actions)}"
    with pytest.raises(ValueError, match="unknown SCAN split"):
        load_split("addprim", "train", root)


@pytest.mark.parametrize("bad", ["IN: jump OUT:", "IN: jump I_JUMP", "jump OUT: I_JUMP",
                                 "IN:  OUT: I_JUMP", "IN: jump OUT: I_JUMP OUT: I_JUMP"])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "tasks.txt"
    path.write_text(f"IN: jump OUT: I_JUMP\n\nIN: walk left OUT: I_TURN_LEFT I_WALK\n{bad}\n")
    with pytest.raises(ValueError, match=r"tasks\.txt:4: malformed"):
        read_task_file(path)


def test_missing_file_offline_raises_file_not_found(tmp_path, monkeypatch):
    calls = []

    def offline(url, target, sha256):
        calls.append((url, target, sha256))
        raise FileNotFoundError(f"{target.name} is missing and could not be downloaded from {url}")

    monkeypatch.setattr(scan, "fetch", offline)
    with pytest.raises(FileNotFoundError, match="tasks_test_addprim_jump.txt"):
        load_split("jump", "test", tmp_path)
    relative = "add_prim_split/tasks_test_addprim_jump.txt"
    assert calls == [(scan.URL + relative, tmp_path / "SCAN" / relative, scan.SHA256[relative])]
    assert scan.URL == "https://raw.githubusercontent.com/brendenlake/SCAN/master/"


@needs_staged
def test_checksums_and_split_sizes_of_the_real_data():
    from modmask.data.root import sha256_of
    for relative, digest in scan.SHA256.items():
        assert sha256_of(STAGED / "SCAN" / relative) == digest, relative
    data = scan.load_all(STAGED)
    for split, (train, test) in SIZES.items():
        assert (len(data[split, "train"]), len(data[split, "test"])) == (train, test)
    jump_train = {c for c, _ in data["jump", "train"] if "jump" in c}
    assert jump_train == {("jump",)}  # the add-primitive split as SOURCES.md describes it


# ---------------------------------------------------------------- vocabularies

def test_vocabulary_orders_by_frequency_then_alphabetically():
    pairs = [(("walk", "twice"), ("I_WALK", "I_WALK")), (("jump",), ("I_JUMP",)), (("walk",), ("I_WALK",))]
    vocab = ScanVocabulary.build([pairs, pairs[1:2]])  # "jump" counted twice, as often as "walk"
    assert vocab.in_words == ("jump", "walk", "twice")
    assert vocab.out_words == ("I_WALK", "I_JUMP")
    assert (vocab.in_eos, vocab.out_eos) == (3, 2)
    assert vocab.encode_in(["twice", "jump"]) == [2, 0]
    assert vocab.decode_out([1, 0, 2, 0, 2]) == ["I_JUMP", "I_WALK"]  # stops at EOS
    assert vocab.decode_in([1, 2, 3]) == ["walk", "twice"]
    assert ScanVocabulary(list(vocab.in_words), list(vocab.out_words)) == vocab
    with pytest.raises(KeyError):
        vocab.encode_out(["I_LOOK"])


@needs_staged
def test_real_vocabulary_sizes_and_order():
    vocab = ScanVocabulary.load(STAGED)
    assert len(vocab.in_words) == 13 and vocab.in_eos == 13
    assert sorted(vocab.out_words) == sorted(ACTIONS) and vocab.out_eos == 6
    # I_WALK, I_RUN and I_LOOK are equally frequent: the alphabetical tie-break fixes their ids.
    assert vocab.out_words == (L, R, "I_JUMP", "I_LOOK", "I_RUN", "I_WALK")
    counts = Counter(w for pairs in scan.load_all(STAGED).values() for c, _ in pairs for w in c)
    frequencies = [counts[w] for w in vocab.in_words]
    assert frequencies == sorted(frequencies, reverse=True)


# ---------------------------------------------------------------- batches

def test_encode_pads_with_eos_and_counts_it_in_lengths():
    pairs = _pairs(["jump", "walk left twice", "turn around right and run"])
    vocab = ScanVocabulary.build([pairs])
    data = ScanData(pairs, vocab)
    (inputs, in_lengths), (targets, out_lengths) = data.encode(torch.tensor([0, 1]))
    assert inputs.dtype == targets.dtype == in_lengths.dtype == torch.long
    assert in_lengths.tolist() == [2, 4] and out_lengths.tolist() == [2, 5]
    assert inputs.shape == (2, 4) and targets.shape == (2, 5)  # trimmed to the batch's longest
    assert inputs[0].tolist() == vocab.encode_in(["jump"]) + [vocab.in_eos] * 3
    assert inputs[1].tolist() == vocab.encode_in(["walk", "left", "twice"]) + [vocab.in_eos]
    assert targets[1].tolist() == vocab.encode_out([L, "I_WALK", L, "I_WALK"]) + [vocab.out_eos]
    assert vocab.decode_out(targets[1]) == [L, "I_WALK", L, "I_WALK"]
    (inputs, in_lengths), (targets, out_lengths) = data.encode(slice(None))
    assert inputs.shape == (3, 6) and targets.shape == (3, 6) and out_lengths.tolist() == [2, 5, 6]


def test_scan_data_works_with_the_samplers():
    pairs = _pairs(generate_commands(50, seed=2))
    data = ScanData(pairs, ScanVocabulary.build([pairs]))
    batches = fixed_batches(data, 16)
    assert sum(len(b[0][1]) for b in batches) == 50
    (inputs, in_lengths), (targets, out_lengths) = next(RandomBatches(data, 8, seed=0))
    assert inputs.shape[0] == targets.shape[0] == 8
    assert inputs.shape[1] == in_lengths.max() and targets.shape[1] == out_lengths.max()
