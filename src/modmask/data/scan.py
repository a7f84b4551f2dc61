"""SCAN task files, word vocabularies and padded batches for the SCAN experiments (paper §2.3, §2.4).

The four splits the paper uses are read from `<data root>/SCAN/` in the official format
(`IN: <command> OUT: <actions>`, one example a line). A missing file is downloaded from the
brendenlake/SCAN repository into `writable_dir(root)/SCAN/` and checked against its sha256
(commit c4b756c); offline, the download raises FileNotFoundError naming the file and where to put it.

Token ids: word i of a vocabulary has id i; EOS has id len(words) (the decoder's SOS shares it).
Sequences are padded with EOS as well, as in the original code: models must use the lengths
(which count the EOS) to find each sequence's true end, never the padding value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .root import data_root, fetch, writable_dir

Pair = tuple[tuple[str, ...], tuple[str, ...]]  # (command words, action words)

URL = "https://raw.githubusercontent.com/brendenlake/SCAN/master/"
SPLITS = {  # split name -> (train file, test file), relative to the SCAN folder
    "simple": ("simple_split/tasks_train_simple.txt", "simple_split/tasks_test_simple.txt"),
    "length": ("length_split/tasks_train_length.txt", "length_split/tasks_test_length.txt"),
    "jump": ("add_prim_split/tasks_train_addprim_jump.txt", "add_prim_split/tasks_test_addprim_jump.txt"),
    "turn_left": ("add_prim_split/tasks_train_addprim_turn_left.txt",
                  "add_prim_split/tasks_test_addprim_turn_left.txt"),
}
PARTS = ("train", "test")
SHA256 = {  # upstream commit c4b756cbc010d75c912f16c42c8f15dc6b7e6c8f
    "simple_split/tasks_train_simple.txt": "941bb8a088c5f53ceff12fde902dc008933cf0c4203cc672c47b5f79d73262dd",
    "simple_split/tasks_test_simple.txt": "1fe1c8f5a19d0dc40e41bab94278f45f66f3dc415a978bd29855a23440610fc6",
    "length_split/tasks_train_length.txt": "b034212dc7cf87ce62f3a067dd6ad49c4d5cd18d51d615d13825516bcb1ebbc2",
    "length_split/tasks_test_length.txt": "0760752ed34a75116ae11dcc1ee17526b7500060da1366540730fa24894d7db3",
    "add_prim_split/tasks_train_addprim_jump.txt":
        "e3c78485692e028eed4205e1b8b3fd0e785ef2c12d45b5b89204dadf5b239e23",
    "add_prim_split/tasks_test_addprim_jump.txt":
        "8147ae2651422c701162e174d9d66158daa57858a26b30317ac61797118ac7a5",
    "add_prim_split/tasks_train_addprim_turn_left.txt":
        "1b3fed86055dd7689d217f1b90cc8960aeb1cf200f4f209dc47935761b05304c",
    "add_prim_split/tasks_test_addprim_turn_left.txt":
        "15a82c2d25ac7c3c1fff7e18051fb085974ef3617de895c520d02144396a10e2",
}


# ---------------------------------------------------------------- files

def read_task_file(path: str | Path) -> list[Pair]:
    """All examples of one task file, in file order. Blank lines are skipped.

    Raises ValueError naming the file and the 1-based line number of a malformed line.
    """
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            head, sep, actions = line.partition(" OUT: ")
            command = head[len("IN: "):].split() if head.startswith("IN: ") else []
            if not sep or not command or not actions.split() or " OUT: " in actions:
                raise ValueError(f"{path}:{number}: malformed SCAN line, expected "
                                 f"'IN: <command> OUT: <actions>', got {line.rstrip()[:80]!r}")
            pairs.append((tuple(command), tuple(actions.split())))
    return pairs


def write_task_file(path: str | Path, pairs: Iterable[Pair]) -> Path:
    """Write examples in the official format (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"IN: {' '.join(c)} OUT: {' '.join(a)}\n" for c, a in pairs), encoding="utf-8")
    return path


def make_split_files(folder: str | Path, pairs: Sequence[Pair], test_fraction: float = 0.25) -> Path:
    """Tiny SCAN data for tests: every split's files under `folder/SCAN/`, each holding the same
    examples (the first 1 - test_fraction in train, the rest in test). Returns `folder`, a data root
    that `load_split(..., root=folder)` reads."""
    cut = len(pairs) - int(round(len(pairs) * test_fraction))
    for train_file, test_file in SPLITS.values():
        write_task_file(Path(folder) / "SCAN" / train_file, pairs[:cut])
        write_task_file(Path(folder) / "SCAN" / test_file, pairs[cut:])
    return Path(folder)


def split_file(split: str, part: str, root: str | Path | None = None) -> Path:
    """The path of one split's train or test file, downloaded (and checksummed) if missing."""
    if split not in SPLITS or part not in PARTS:
        raise ValueError(f"unknown SCAN split {split!r}/{part!r}; splits: {list(SPLITS)}, parts: {PARTS}")
    relative = SPLITS[split][PARTS.index(part)]
    root = data_root(root)
    path = root / "SCAN" / relative
    if path.is_file():
        return path
    # The root may be read-only (the staged copy is): downloads go to its writable stand-in.
    target = writable_dir(root) / "SCAN" / relative
    return target if target.is_file() else fetch(URL + relative, target, SHA256[relative])


def load_split(split: str, part: str, root: str | Path | None = None) -> list[Pair]:
    """The examples of `split` ("simple", "length", "jump", "turn_left"), `part` ("train", "test")."""
    return read_task_file(split_file(split, part, root))


def load_all(root: str | Path | None = None) -> dict[tuple[str, str], list[Pair]]:
    """Every (split, part) of the four splits."""
    return {(split, part): load_split(split, part, root) for split in SPLITS for part in PARTS}


# ---------------------------------------------------------------- vocabularies

def _by_frequency(counts: Counter) -> tuple[str, ...]:
    # Descending frequency as in the paper; ties alphabetical so the ids never depend on file order.
    return tuple(sorted(counts, key=lambda word: (-counts[word], word)))


@dataclass(frozen=True)
class ScanVocabulary:
    """Input words and output actions; EOS (and padding) has id len(words) on each side."""

    in_words: tuple[str, ...]
    out_words: tuple[str, ...]

    @classmethod
    def build(cls, pair_lists: Iterable[Iterable[Pair]]) -> "ScanVocabulary":
        """Count every word of every list (a sentence in two lists counts twice), most frequent first."""
        ins, outs = Counter(), Counter()
        for pairs in pair_lists:
            for command, actions in pairs:
                ins.update(command)
                outs.update(actions)
        return cls(_by_frequency(ins), _by_frequency(outs))

    @classmethod
    def load(cls, root: str | Path | None = None) -> "ScanVocabulary":
        """The paper's vocabularies: over all sentences, train and test, of the four splits."""
        return cls.build(load_all(root).values())

    def __post_init__(self):
        # Tuples even when given lists (e.g. read back from JSON), so the value stays hashable.
        object.__setattr__(self, "in_words", tuple(self.in_words))
        object.__setattr__(self, "out_words", tuple(self.out_words))
        # Lookup tables built once; not fields, so equality and repr stay the two word lists.
        object.__setattr__(self, "_in_ids", {word: i for i, word in enumerate(self.in_words)})
        object.__setattr__(self, "_out_ids", {word: i for i, word in enumerate(self.out_words)})

    @property
    def in_eos(self) -> int:
        return len(self.in_words)

    @property
    def out_eos(self) -> int:
        return len(self.out_words)

    def encode_in(self, words: Sequence[str]) -> list[int]:
        """Command words -> ids (no EOS). KeyError for a word outside the vocabulary."""
        return [self._in_ids[word] for word in words]

    def encode_out(self, words: Sequence[str]) -> list[int]:
        """Action words -> ids (no EOS). KeyError for an action outside the vocabulary."""
        return [self._out_ids[word] for word in words]

    def decode_in(self, ids: Iterable[int]) -> list[str]:
        """Input ids -> command words, up to the first EOS (so padding is dropped too)."""
        return _decode(ids, self.in_words)

    def decode_out(self, ids: Iterable[int]) -> list[str]:
        """Output ids -> actions, up to the first EOS (so padding is dropped too)."""
        return _decode(ids, self.out_words)


def _decode(ids: Iterable[int], words: tuple[str, ...]) -> list[str]:
    out = []
    for i in map(int, ids):
        if i == len(words):  # EOS
            break
        out.append(words[i])
    return out


# ---------------------------------------------------------------- batches

def _padded(sequences: list[list[int]], eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids + EOS, padded with EOS: ([N, max length + 1] long, [N] long lengths counting the EOS)."""
    lengths = torch.tensor([len(s) + 1 for s in sequences], dtype=torch.long)
    ids = torch.full((len(sequences), int(lengths.max()) if len(sequences) else 0), eos, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return ids, lengths


class ScanData:
    """Encoded SCAN examples for the batch samplers in `sampling.py`.

    `encode(index)` (index: [n] long tensor or a slice) returns
    ((inputs [n, T_in] long, in_lengths [n] long), (targets [n, T_out] long, out_lengths [n] long)):
    command ids then EOS, and action ids then EOS, both padded with EOS; lengths count the EOS.
    T_in and T_out are the longest lengths in the batch, not in the dataset.
    """

    def __init__(self, pairs: Sequence[Pair], vocab: ScanVocabulary):
        self.pairs, self.vocab = list(pairs), vocab
        # Encoded once up front: batches are then two gathers and a trim, not Python loops.
        self.inputs, self.in_lengths = _padded([vocab.encode_in(c) for c, _ in self.pairs], vocab.in_eos)
        self.targets, self.out_lengths = _padded([vocab.encode_out(a) for _, a in self.pairs], vocab.out_eos)

    @classmethod
    def load(cls, split: str, part: str, vocab: ScanVocabulary, root: str | Path | None = None) -> "ScanData":
        return cls(load_split(split, part, root), vocab)

    def __len__(self) -> int:
        return len(self.pairs)

    def encode(self, index: torch.Tensor | slice):
        in_lengths, out_lengths = self.in_lengths[index], self.out_lengths[index]
        empty = len(in_lengths) == 0
        t_in, t_out = (0, 0) if empty else (int(in_lengths.max()), int(out_lengths.max()))
        return ((self.inputs[index, :t_in], in_lengths), (self.targets[index, :t_out], out_lengths))
