"""Where the experiments put their networks: a GPU when there is one, unless `--device` says
otherwise. Data stays on the CPU; pretraining, mask training and evaluation move each batch to the
network's device, and masks come back to the CPU for analysis, so the choice changes speed only.
Not a config key: resuming a run on another device is allowed."""

from __future__ import annotations

import torch
from torch import nn

_requested = "auto"


def set_device(name: str) -> None:
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    global _requested
    if name != "auto":
        device = torch.device(name)  # raises for a malformed name
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no CUDA GPU (torch {torch.__version__}); "
                             f"use --device cpu or auto")
    _requested = name


def device() -> torch.device:
    if _requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(_requested)


def place(model: nn.Module) -> nn.Module:
    """The model on the chosen device (in place; returned for chaining)."""
    return model.to(device())
