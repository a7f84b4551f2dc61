"""Where the experiments put their networks: a GPU when there is one, unless `--device` says
otherwise. Data stays on the CPU; pretraining, mask training and evaluation move each batch to the
network's device, and masks come back to the CPU for analysis, so the choice changes speed only.
Not a config key: resuming a run on another device is allowed."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU (torch {torch.__version__}); "
                         f"use --device cpu or auto")
    return device
