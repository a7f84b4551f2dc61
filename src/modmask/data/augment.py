"""Training-time image augmentation for the CIFAR-10 ResNet (paper §2.6): a random 32x32 crop of
the image padded by 4 pixels, then a horizontal flip with probability 1/2, as the usual
`RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`; torch ops only, seeded and resumable.
"""

from __future__ import annotations

import torch


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """images [n, C, H, W] -> [n, C, H, W]: each image padded by `padding` pixels of `fill` (a
    scalar or per-channel [C]), cropped back to H x W at a random offset, and mirrored left-right
    with probability 1/2. Draws the offsets [n, 2] first, then the flips [n], from `generator`."""
    n, channels, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    fill = torch.as_tensor(fill, dtype=images.dtype).reshape(-1, 1, 1)  # [C or 1, 1, 1]
    padded = fill.expand(n, channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, :, padding:padding + height, padding:padding + width] = images
    rows = offsets[:, 0, None] + torch.arange(height)  # [n, H]
    cols = offsets[:, 1, None] + torch.arange(width)  # [n, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the crop's columns backwards
    batch = torch.arange(n)[:, None, None, None]
    return padded[batch, torch.arange(channels)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


class AugmentedBatches:
    """Endless (images [B, C, H, W], labels) batches of `batches` (e.g. RandomBatches) passed
    through `random_crop_flip` with its own generator; `state()` / `load_state()` carry both
    generators, so a resumed pretraining sees the same images as an uninterrupted one.

    fill: the padding value per channel [C] in the batches' scale; for normalised images, the
    value that black (0) becomes, -mean / std, so padding happens "before" normalisation."""

    def __init__(self, batches, seed: int, padding: int = 4, fill: torch.Tensor | float = 0.0):
        self.batches, self.padding, self.fill = batches, padding, fill
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self):
        images, labels = next(self.batches)
        return random_crop_flip(images, self.generator, self.padding, self.fill), labels

    def state(self) -> torch.Tensor:
        return torch.cat([self.batches.state(), self.generator.get_state()])

    def load_state(self, state: torch.Tensor) -> None:
        size = len(self.batches.state())
        self.batches.load_state(state[:size])
        # A copy: Generator.set_state on a view that starts inside its storage crashes (torch 2.13).
        self.generator.set_state(state[size:].clone())
