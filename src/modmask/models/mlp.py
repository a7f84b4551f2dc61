"""Feedforward network: Linear layers with ReLU between them (paper §2.1, §2.2, §2.7)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """in_features -> hidden[0] -> ... -> out_features; ReLU after every layer but the last.

    Parameters are named `layers.{i}.weight` / `layers.{i}.bias` (the paper's `layers_i`).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_features] -> [B, out_features]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
