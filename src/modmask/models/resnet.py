"""The CIFAR ResNet of the paper's class-removal study (§2.6, "ResNet-110"): a 3x3 stem, three
stages of BasicBlocks (16, 32, 64 channels), global average pooling, Linear.

Depth 6 * blocks + 2: 18 blocks per stage give ResNet-110, 3 give ResNet-20. Plain modules and
functional ops only, so `torch.func.functional_call` under `torch.vmap` can batch it over mask
samples; BatchNorm then runs in eval mode (running statistics), as during mask training.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

WIDTHS = (16, 32, 64)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free convolution with the paper's init N(0, sqrt(2 / (k * k * out_channels)))."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel * kernel * out_channels)))
    return conv


class BasicBlock(nn.Module):
    """[B, in, H, W] -> [B, out, H / stride, W / stride]: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)),
    the shortcut a 1x1 conv + BN where the shape changes, else the identity."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3)
        self.norm2 = nn.BatchNorm2d(out_channels)
        reshaped = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(_conv(in_channels, out_channels, 1, stride), nn.BatchNorm2d(out_channels))
                         if reshaped else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """[B, 3, 32, 32] -> [B, classes]. blocks: BasicBlocks per stage (18: ResNet-110, 3: ResNet-20);
    stride 2 at the start of the second and third stage. BatchNorm starts at gamma 1, beta 0
    (PyTorch's default); the output layer keeps PyTorch's default Linear init. widths: the three
    stages' channels (the paper's 16, 32, 64; wider ones make a large convolutional model cheaply)."""

    def __init__(self, classes: int = 10, blocks: int = 18, in_channels: int = 3,
                 widths: tuple[int, int, int] = WIDTHS):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks per stage must be positive (got {blocks})")
        self.conv = _conv(in_channels, widths[0], 3)
        self.norm = nn.BatchNorm2d(widths[0])
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock(channels if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(blocks))))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.output = nn.Linear(widths[-1], classes)
        self.depth = 6 * blocks + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        for stage in self.stages:
            x = stage(x)
        return self.output(x.mean(dim=(2, 3)))
