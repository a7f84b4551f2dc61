"""The paper's simple CIFAR-10 CNN (§2.6): four 3x3 convolutions, global average pooling, Linear."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SimpleCNN(nn.Module):
    """[B, 3, 32, 32] -> [B, classes]. conv 32, 64, 128 (dropout 0.25), 256 (dropout 0.5)."""

    def __init__(self, classes: int = 10, dropout: bool = True, in_channels: int = 3):
        super().__init__()
        widths = [in_channels, 32, 64, 128, 256]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.output = nn.Linear(256, classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = lambda t, p: F.dropout(t, p, self.training) if self.dropout else t  # noqa: E731
        x = F.max_pool2d(F.relu(self.convs[0](x)), 2)
        x = F.max_pool2d(F.relu(self.convs[1](x)), 2)
        x = F.max_pool2d(F.relu(drop(self.convs[2](x), 0.25)), 2)
        x = drop(F.relu(self.convs[3](x)), 0.5)
        return self.output(x.mean(dim=(2, 3)))
