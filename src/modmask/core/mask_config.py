"""The settings of mask training (paper §1.4, §1.7), in two frozen records.

`MaskConfig` says what a mask learns (steps, k, beta, lr, clipping, which tensors, ...); `Execution`
says how a step runs (vmap or sequential path, compiled kernels, sample groups, precision, joint
stages). Only the second may change when a run resumes: it changes how masks train, not what they
learn (beyond float rounding). Every experiment's config nests both with the paper's values for that
study, so a new option added here reaches every study (and the command line, as
`--set mask.<name>=...` and `--set execution.<name>=...`) without per-experiment code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .memory import PRECISIONS  # precision name -> torch dtype
from .removal import REMOVALS
from .units import GRANULARITIES
from .selection import per_tensor

PATHS = ("auto", "vmap", "sequential")
MODES = ("eval", "train")


def _bad(value, ok) -> bool:
    # None: left to a study's per-variant default (experiments' variant_defaults), filled before use
    return value is not None and not ok(value)


def _problems(checks: dict[str, bool]) -> list[str]:
    return [message for message, bad in checks.items() if bad]


@dataclass(frozen=True)
class MaskConfig:
    """What a mask learns. steps: updates per mask. k: mask samples per step (each on B/k examples).
    beta, reg_batch_size: the regulariser beta / b * sum(logits), b defaulting to the batch size
    (None). lr: Adam's learning rate for the logits. grad_clip: global-norm clipping of the logits'
    gradient (None: off). init_logit: every logit's start (the paper's 2.0). biases / norms /
    parameters: which tensors get a mask (see select_parameters). original_clipping: emulate the
    original code's clipping (docs/deviations.md). mode: the model's mode while masks train ('eval'
    as in the paper; 'train' keeps e.g. random teacher forcing active). target_density: the
    fraction of the masked weights the mask should keep (None: beta alone decides); the regulariser
    then becomes the multiplier of that constraint, starting at beta (core/density.py);
    target_per_tensor: the same fraction in every masked tensor instead of over all of them.
    early_stop: end the stage once its decisions have settled (core/density.settled). removal: how
    a removed weight is removed, 'zero' (the paper's) or 'mean' (its mean contribution kept, read on
    reference batches through the unmasked model; core/removal.py), or rules per tensor
    'pattern=mode,...,default'; a mask means what it does in the mode it was trained in. granularity:
    what one logit stands for, 'weight' (the paper's), 'row', 'column', 'head' or 'neuron', or rules
    per tensor (core/units.py); heads: the attention heads per layer where the model does not say."""

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
    original_clipping: bool = False
    mode: str = "eval"
    target_density: float | None = None
    target_per_tensor: bool = False
    early_stop: bool = False
    removal: str = "zero"
    granularity: str = "weight"
    heads: int | None = None

    def __post_init__(self):
        per_tensor(self.removal, [], REMOVALS, "removal")  # unknown modes fail here, before any work
        per_tensor(self.granularity, [], GRANULARITIES, "granularity")
        problems = _problems({
            **{f"{name} must be positive (got {getattr(self, name)})": _bad(getattr(self, name), lambda v: v > 0)
               for name in ("steps", "k", "lr")},
            f"beta must be 0 or more (got {self.beta})": _bad(self.beta, lambda v: v >= 0),
            f"reg_batch_size must be positive or None (got {self.reg_batch_size})":
                self.reg_batch_size is not None and self.reg_batch_size < 1,
            f"grad_clip must be positive or None (got {self.grad_clip})":
                self.grad_clip is not None and self.grad_clip <= 0,
            f"mode must be one of {', '.join(MODES)} (got {self.mode!r})": self.mode not in MODES,
            f"target_density must be a fraction of the masked weights strictly between 0 and 1, or None "
            f"(got {self.target_density!r})": self.target_density is not None
            and not (isinstance(self.target_density, (int, float)) and 0 < self.target_density < 1),
        })
        if problems:
            raise ValueError("mask settings: " + "; ".join(problems))


@dataclass(frozen=True)
class Execution:
    """How a mask step runs; none of it changes what a mask learns beyond float rounding.

    path: 'auto' (vmap, or sequential with a warning where the model cannot be batched), 'vmap'
    (error instead) or 'sequential'. compiled: fuse the elementwise mask work with torch.compile.
    samples_per_pass: how many of the k samples run together (a divisor of k; None: all k; 'auto':
    the most that fit the device's free memory), which bounds the masked copies in memory to
    samples_per_pass x |W| with the same result. precision: 'fp32' or 'bf16' (the model's forward
    under autocast; logits and Adam stay fp32). joint: a study trains its independent masks in one
    pass (one MaskTrainer for M masks; false: one at a time)."""

    path: str = "auto"
    compiled: bool = False
    samples_per_pass: int | str | None = None
    precision: str = "fp32"
    joint: bool = True

    def __post_init__(self):
        groups = self.samples_per_pass
        problems = _problems({
            f"path must be one of {', '.join(PATHS)} (got {self.path!r})": self.path not in PATHS,
            f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})":
                self.precision not in PRECISIONS,
            f"samples_per_pass must be a positive divisor of k, 'auto' or None (got {groups!r})":
                groups not in (None, "auto") and not (isinstance(groups, int) and groups > 0),
        })
        if problems:
            raise ValueError("execution settings: " + "; ".join(problems))


# MaskConfig's fields in modmask 0.1, which held both records: now Execution's
EXECUTION_SETTINGS = ("path", "compiled", "samples_per_pass", "precision", "joint")
# keyword options of train_mask that are neither record's fields: the trainer's own
TRAINER_OPTIONS = ("seed", "init_logits", "trainable", "fixed_masks", "reference")


def settings_from(config: MaskConfig | None, execution: Execution | None, options: dict
                  ) -> tuple[MaskConfig, Execution, dict]:
    """(config, execution, the other options): keyword options that name a field of MaskConfig or
    Execution override it; an option that is none of those nor a trainer option is an error."""
    learn = {f.name for f in dataclasses.fields(MaskConfig)}
    run = {f.name for f in dataclasses.fields(Execution)}
    unknown = sorted(set(options) - learn - run - set(TRAINER_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: MaskConfig takes {sorted(learn)}, Execution takes "
                        f"{sorted(run)}, the trainer takes {list(TRAINER_OPTIONS)}")
    config = dataclasses.replace(config or MaskConfig(), **{n: v for n, v in options.items() if n in learn})
    execution = dataclasses.replace(execution or Execution(), **{n: v for n, v in options.items() if n in run})
    return config, execution, {n: v for n, v in options.items() if n not in learn | run}
