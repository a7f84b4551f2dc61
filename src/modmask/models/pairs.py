"""Double-addition models (paper §2.2): how the two operand pairs enter the network.

PairwiseFNN runs an FNN once per pair, with the other pair's inputs zeroed, and reads only that
pair's output slot: each pair has its own input and output units, hidden units may be shared.
PairLSTM shows the pairs either together (the 80-d input for 6 steps, both outputs read at the
last step) or one after the other (`only_one_io`: steps 0-2 show pair 1's inputs only, steps 3-5
pair 2's; pair 1's output is read at step 2 and pair 2's at step 5).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .lstm import LSTM
from .mlp import MLP

PAIR_INPUTS, PAIR_OUTPUTS = 40, 20


class PairwiseFNN(nn.Module):
    """[B, 80] -> [B, 40]; parameters `net.layers.{i}.*`."""

    def __init__(self, hidden: Sequence[int]):
        super().__init__()
        self.net = MLP(2 * PAIR_INPUTS, hidden, 2 * PAIR_OUTPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = []
        for pair in range(2):
            keep = torch.zeros_like(x)
            keep[:, pair * PAIR_INPUTS:(pair + 1) * PAIR_INPUTS] = 1
            out = self.net(x * keep)
            slots.append(out[:, pair * PAIR_OUTPUTS:(pair + 1) * PAIR_OUTPUTS])
        return torch.cat(slots, dim=1)


class PairLSTM(nn.Module):
    """[B, 80] -> [B, 40]; mode 'together' or 'only_one_io'; parameters `lstm.cells.*`, `output.*`."""

    def __init__(self, hidden_size: int = 256, mode: str = "together", steps_per_pair: int = 3):
        super().__init__()
        if mode not in ("together", "only_one_io"):
            raise ValueError(f"mode must be 'together' or 'only_one_io', not {mode!r}")
        self.mode, self.steps = mode, steps_per_pair
        self.lstm = LSTM(2 * PAIR_INPUTS, hidden_size, 2)
        self.output = nn.Linear(hidden_size, 2 * PAIR_OUTPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "together":
            hidden, _ = self.lstm(x.unsqueeze(1).expand(-1, 2 * self.steps, -1))
            return self.output(hidden[:, -1])
        first = torch.zeros_like(x)
        first[:, :PAIR_INPUTS] = 1
        sequence = torch.cat([(x * first).unsqueeze(1).expand(-1, self.steps, -1),
                              (x * (1 - first)).unsqueeze(1).expand(-1, self.steps, -1)], dim=1)
        hidden, _ = self.lstm(sequence)
        out1 = self.output(hidden[:, self.steps - 1])[:, :PAIR_OUTPUTS]
        out2 = self.output(hidden[:, -1])[:, PAIR_OUTPUTS:]
        return torch.cat([out1, out2], dim=1)
