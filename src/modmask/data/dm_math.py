"""DeepMind Mathematics: the released archive layout, de-duplication, held-out test sets (paper §2.5).

Layout (the released `mathematics_dataset-v1.0` or what `dm_math_generate.generate` writes):
`<root>/<file>/<module>.txt` for file in train-easy, train-medium, train-hard, interpolate,
extrapolate; question and answer on alternate lines. `<root>` may also be the folder that holds
`mathematics_dataset-v1.0/`.

As in the paper: files are read in that order, questions are de-duplicated across files keeping
the first occurrence, and 10,000 random examples of each train difficulty (numpy RandomState(1234))
are held out as that difficulty's test set. The vocabulary is every character of every file,
sorted, shared by input and output; ids are `ScanVocabulary`'s (EOS = number of characters), and
batches come from `ScanData`, which handles any (input, output) token sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .scan import ScanVocabulary

FILES = ("train-easy", "train-medium", "train-hard", "interpolate", "extrapolate")
DIFFICULTIES = ("easy", "medium", "hard")
PAPER_MODULES = ("arithmetic__add_or_sub", "algebra__linear_1d", "calculus__differentiate", "comparison__sort",
                 "polynomials__collect")

Pair = tuple[str, str]


def _module_root(root: Path) -> Path:
    nested = root / "mathematics_dataset-v1.0"
    return nested if nested.is_dir() else root


def read_file(path: Path) -> list[Pair]:
    """Question/answer pairs of one file; a clear error for an odd number of lines."""
    lines = path.read_text().splitlines()
    if len(lines) % 2:
        raise ValueError(f"{path}: {len(lines)} lines; expected question and answer on alternate lines "
                         f"(an even count). Is the file truncated?")
    return list(zip(lines[0::2], lines[1::2]))


def read_module(root: str | Path, module: str) -> dict[str, list[Pair]]:
    """{file: pairs} for every file of the layout that has `module` (at least the train files)."""
    base = _module_root(Path(root))
    found = {name: read_file(base / name / f"{module}.txt") for name in FILES
             if (base / name / f"{module}.txt").exists()}
    missing = [name for name in FILES[:3] if name not in found]
    if missing:
        raise FileNotFoundError(f"DeepMind Mathematics module {module!r}: no {', '.join(missing)} file under "
                                f"{base} (expected {base}/train-easy/{module}.txt ...). Give the released "
                                f"archive's folder with --set data=PATH, or leave data unset to generate")
    return found


def split_module(files: dict[str, list[Pair]], held_out: int = 10_000, seed: int = 1234) -> dict[str, list[Pair]]:
    """The paper's sets from {file: pairs}: train_<d> and test_<d> for d in easy, medium, hard (the
    last `held_out` of a random permutation become the test set), plus interpolate/extrapolate.
    Questions seen in an earlier file (or earlier in the same file) are dropped."""
    seen, sets = set(), {}
    rng = np.random.RandomState(seed)
    for name in FILES:
        unique = []
        for question, answer in files.get(name, []):
            if question not in seen:
                seen.add(question)
                unique.append((question, answer))
        if name.startswith("train-"):
            difficulty = name.removeprefix("train-")
            order = rng.permutation(len(unique))
            test_count = min(held_out, len(unique) // 2)  # tiny files keep half for training
            sets[f"test_{difficulty}"] = [unique[i] for i in order[:test_count]]
            sets[f"train_{difficulty}"] = [unique[i] for i in order[test_count:]]
        elif unique:
            sets[name] = unique
    return sets


def char_vocabulary(sets: dict[str, list[Pair]]) -> ScanVocabulary:
    """Every character of every question and answer, sorted; the same list on both sides."""
    chars = sorted({c for pairs in sets.values() for q, a in pairs for c in q + a})
    return ScanVocabulary(tuple(chars), tuple(chars))
