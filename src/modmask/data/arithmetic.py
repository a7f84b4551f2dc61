"""Two-operand arithmetic data: addition/multiplication (paper §2.1) and double addition (§2.2).

Operands are uniform integers in [0, 99]; results are taken mod 100 and written as two decimal
digits, least-significant first. Inputs are one-hot digits. Examples are generated from numpy
RandomState(0x12345678 + split offset), as in the original code: train 1,000,000 (offset 0),
validation 10,000 (offset 2). Only 20,000 distinct add/mul inputs exist, so validation overlaps
training heavily (as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

SEED_BASE = 0x12345678
SPLIT_OFFSETS = {"train": 0, "valid": 2}
ADD, MUL = 0, 1


def digits(values: torch.Tensor) -> torch.Tensor:
    """[...] integers in [0, 99] -> [..., 2] digits, least significant first."""
    return torch.stack([values % 10, values // 10], dim=-1)


def one_hot_digits(values: torch.Tensor) -> torch.Tensor:
    """[..., n] integers in [0, 99] -> [..., n * 20] one-hot of each number's two digits (LSD first)."""
    return F.one_hot(digits(values), 10).flatten(-3).float()


@dataclass(frozen=True)
class AddMulData:
    """a, b: [N] operands; op: [N] 0 = add, 1 = mul."""

    a: torch.Tensor
    b: torch.Tensor
    op: torch.Tensor

    @classmethod
    def generate(cls, split: str, size: int | None = None) -> "AddMulData":
        size = size or (1_000_000 if split == "train" else 10_000)
        rng = np.random.RandomState(SEED_BASE + SPLIT_OFFSETS[split])
        a = rng.randint(0, 100, size)
        b = rng.randint(0, 100, size)
        op = rng.randint(0, 2, size)
        return cls(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(op))

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, op: int | None) -> "AddMulData":
        """Only the examples of one operation (None: all)."""
        if op is None:
            return self
        keep = self.op == op
        return AddMulData(self.a[keep], self.b[keep], self.op[keep])

    @staticmethod
    def results(a: torch.Tensor, b: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        return torch.where(op == ADD, a + b, a * b) % 100

    def encode(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [n, 42] = one-hot a0 a1 b0 b1 then one-hot op, targets [n, 2] result digits)."""
        a, b, op = self.a[index], self.b[index], self.op[index]
        inputs = torch.cat([one_hot_digits(torch.stack([a, b], -1)), F.one_hot(op, 2).float()], -1)
        return inputs, digits(self.results(a, b, op))


def digit_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per output digit, averaged. outputs [B, D * 10], targets [B, D]."""
    return F.cross_entropy(outputs.reshape(-1, 10), targets.flatten())


def digits_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B] bool: every digit correct."""
    return (outputs.reshape(*targets.shape, 10).argmax(-1) == targets).all(-1)


@dataclass(frozen=True)
class DoubleAddData:
    """Two independent pairs of operands; the target of pair t is (x_t + y_t) mod 100 (§2.2).

    numbers: [N, 4] = (x1, y1, x2, y2). Inputs [N, 80] = one-hot digits of x1 y1 | x2 y2 (pair 1's
    40 input units, then pair 2's); targets [N, 4] = the two digits of each pair's sum.
    """

    numbers: torch.Tensor

    @classmethod
    def generate(cls, split: str, size: int | None = None) -> "DoubleAddData":
        size = size or (1_000_000 if split == "train" else 10_000)
        rng = np.random.RandomState(SEED_BASE + SPLIT_OFFSETS[split])
        return cls(torch.from_numpy(rng.randint(0, 100, (size, 4))))

    def __len__(self) -> int:
        return len(self.numbers)

    def encode(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        numbers = self.numbers[index]
        sums = (numbers[:, 0::2] + numbers[:, 1::2]) % 100  # [n, 2]: pair 1, pair 2
        return one_hot_digits(numbers), digits(sums).flatten(1)


PAIR_INPUTS = 40  # one-hot input units per pair
PAIR_OUTPUTS = 20  # output logits per pair


def only_pair(inputs: torch.Tensor, pair: int) -> torch.Tensor:
    """[B, 80] -> the same with the other pair's input units zeroed."""
    keep = torch.zeros_like(inputs)
    keep[:, pair * PAIR_INPUTS:(pair + 1) * PAIR_INPUTS] = 1
    return inputs * keep


def pair_outputs(outputs: torch.Tensor, targets: torch.Tensor, pair: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The output logits [B, 20] and target digits [B, 2] of one pair."""
    return outputs[:, pair * PAIR_OUTPUTS:(pair + 1) * PAIR_OUTPUTS], targets[:, 2 * pair:2 * pair + 2]
