"""LSTM written with plain tensor ops, so torch.vmap can batch it over mask samples (paper §2.1).

nn.LSTM runs a fused kernel that takes its weights as a flat list and cannot be vmapped over
weights; this one is a loop of matrix products. Initialisation follows the original code: gate
order i, f, g, o; one bias per cell, zero except the forget gate (1); W_hh ~ N(0, sqrt(1/H)/sqrt 2),
W_ih ~ N(0, sqrt(2/(I+H))/sqrt 2); the g-block of W_hh orthogonal with gain (5/3)/sqrt 2 and the
g-block of W_ih scaled by 5/3.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LSTMCell(nn.Module):
    """One layer's parameters: weight_ih [4H, I], weight_hh [4H, H], bias [4H]."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        h = hidden_size
        self.hidden_size = h
        self.weight_ih = nn.Parameter(torch.empty(4 * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        self.bias = nn.Parameter(torch.zeros(4 * h))
        with torch.no_grad():
            nn.init.normal_(self.weight_hh, 0.0, math.sqrt(1.0 / h) / math.sqrt(2))
            nn.init.normal_(self.weight_ih, 0.0, math.sqrt(2.0 / (input_size + h)) / math.sqrt(2))
            nn.init.orthogonal_(self.weight_hh[2 * h:3 * h], gain=(5 / 3) / math.sqrt(2))
            self.weight_ih[2 * h:3 * h] *= 5 / 3
            self.bias[h:2 * h] = 1.0


class LSTM(nn.Module):
    """Multi-layer LSTM; parameters `cells.{l}.weight_ih`, `.weight_hh`, `.bias`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(LSTMCell(i, hidden_size) for i in sizes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                lengths: torch.Tensor | None = None):
        """x: [B, T, I] -> (outputs [B, T, H] of the last layer, [(h, c)] final state per layer).

        With `lengths` [B], a sequence's state stops changing after its last step, so the final
        states are those at each sequence's true end (by masking, which vmap can batch).
        """
        finals = []
        for layer, cell in enumerate(self.cells):
            if layer > 0 and self.dropout:
                x = nn.functional.dropout(x, self.dropout, self.training)
            batch, steps, _ = x.shape
            hid = cell.hidden_size
            if state is None:
                h = x.new_zeros(batch, hid)
                c = x.new_zeros(batch, hid)
            else:
                h, c = state[layer]
            # the input projection of all time steps in one product; only W_hh stays in the loop
            projected = x @ cell.weight_ih.t() + cell.bias
            outputs = []
            for t in range(steps):
                gates = projected[:, t] + h @ cell.weight_hh.t()
                i, f, g, o = gates.chunk(4, dim=-1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                if lengths is None:
                    h, c = h_new, c_new
                else:
                    running = (t < lengths).unsqueeze(-1)
                    h, c = torch.where(running, h_new, h), torch.where(running, c_new, c)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
            finals.append((h, c))
        return x, finals


class RepeatLSTMClassifier(nn.Module):
    """The add/mul and double-addition LSTM: the input vector is shown for `repeats` steps, and a
    Linear output layer reads the last step. [B, I] -> [B, out_features]."""

    def __init__(self, in_features: int, out_features: int, hidden_size: int = 256,
                 num_layers: int = 2, repeats: int = 3):
        super().__init__()
        self.repeats = repeats
        self.lstm = LSTM(in_features, hidden_size, num_layers)
        self.output = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.unsqueeze(1).expand(-1, self.repeats, -1)
        hidden, _ = self.lstm(sequence)
        return self.output(hidden[:, -1])
