"""The settings of mask training (paper §1.4, §1.7), in one frozen value.

`train_mask` takes them as keyword arguments; every experiment's config nests a `MaskConfig`
with the paper's values for that study, so a new option added here reaches every study (and the
command line, as `--set mask.<name>=...`) without per-experiment code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PATHS = ("auto", "vmap", "sequential")
MODES = ("eval", "train")


# settings that change how masks train, not what they learn (beyond float rounding)
EXECUTION_SETTINGS = ("path", "compiled", "samples_per_pass", "joint")


@dataclass(frozen=True)
class MaskConfig:
    """steps: updates per mask. k: mask samples per step (each on B/k examples). beta, reg_batch_size:
    the regulariser beta / b * sum(logits), b defaulting to the batch size. lr: Adam's learning rate
    for the logits. grad_clip: global-norm clipping of the logits' gradient (None: off). init_logit:
    every logit's start (the paper's 2.0). biases / norms / parameters: which tensors get a mask (see
    select_parameters). path: 'auto' (vmap, or sequential with a warning where the model cannot be
    batched), 'vmap' (error instead) or 'sequential'. compiled: fuse the elementwise mask work with
    torch.compile. original_clipping: emulate the original code's clipping (docs/deviations.md).
    mode: the model's mode while masks train ('eval' as in the paper; 'train' keeps e.g. random
    teacher forcing active). samples_per_pass: how many of the k samples run together (a divisor
    of k; None: all k; 'auto': the most that fit the device's free memory), which bounds the masked
    copies in memory to samples_per_pass x |W| with the same result. precision: 'fp32' or 'bf16'
    (the model's forward under autocast; logits and Adam stay fp32). joint: a study trains its
    independent masks in one pass (core/joint.py; the same masks up to float rounding, with
    checkpoints inside the stage; false: one at a time). path, compiled, samples_per_pass and
    joint change how masks train, not what they learn (beyond float rounding): a run may be
    resumed with other values (EXECUTION_SETTINGS)."""

    steps: int = 20_000
    k: int = 4
    beta: float = 1e-4
    lr: float = 1e-2
    reg_batch_size: int | None = None
    grad_clip: float | None = 1.0
    init_logit: float = 2.0
    biases: bool = False
    norms: bool = True
    parameters: Any = None
    path: str = "auto"
    compiled: bool = False
    original_clipping: bool = False
    mode: str = "eval"
    samples_per_pass: int | str | None = None
    precision: str = "fp32"
    joint: bool = True

    def __post_init__(self):
        problems = [f"{name} must be positive (got {getattr(self, name)})" for name in ("steps", "k", "lr")
                    if getattr(self, name) is not None and getattr(self, name) <= 0]
        if self.beta is not None and self.beta < 0:
            problems.append(f"beta must be 0 or more (got {self.beta})")
        if self.reg_batch_size is not None and self.reg_batch_size < 1:
            problems.append(f"reg_batch_size must be positive or None (got {self.reg_batch_size})")
        if self.path not in PATHS:
            problems.append(f"path must be one of {', '.join(PATHS)} (got {self.path!r})")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if problems:
            raise ValueError("mask settings: " + "; ".join(problems))

    def trainer_options(self) -> dict[str, Any]:
        """The keyword arguments of MaskTrainer (every field except steps, mode and joint)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("steps", "mode", "joint")}


MASK_SETTINGS = tuple(f.name for f in dataclasses.fields(MaskConfig))
