"""Evaluating the frozen model under masks, never modifying it (paper §1.6, §2.8).

Evaluation is deterministic: a mask is the boolean `logit > 0` (the original code uses `>= 0` in
evaluation and `> 0` in analysis; they differ only for logits exactly 0, and we use one rule).
Tensors without an entry in the masks keep their full weights.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .batches import as_arguments, to_device, unpack_batch, without_cache
from .masking import masked_call, model_mode
from .masks import Masks

MetricFn = Callable[[Any, Any], torch.Tensor]


@torch.no_grad()
def collect(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, batches: Iterable,
            fn: MetricFn, mode: str = "eval") -> torch.Tensor:
    """fn(outputs, targets) -> [b, ...] per batch, concatenated along dim 0 (on the CPU). Batches
    as in train_mask: (inputs, targets), inputs a tensor, tuple or dict of keyword arguments, or a
    dict alone (targets None); models that take `use_cache` are called with use_cache=False."""
    device = next(model.parameters()).device
    parts = []
    with model_mode(model, mode):
        for batch in batches:
            inputs, targets = unpack_batch(batch)
            args, kwargs = to_device(as_arguments(inputs), device)
            outputs = masked_call(model, masks or {}, *args, **without_cache(model, kwargs))
            parts.append(fn(outputs, to_device(targets, device)).cpu())
    if not parts:
        raise ValueError("no batch to evaluate on")
    return torch.cat(parts)


def evaluate(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, batches: Iterable,
             metric: MetricFn, mode: str = "eval") -> float:
    """Mean of a per-example metric (e.g. 1.0 for a correct prediction) under the masks."""
    return collect(model, masks, batches, metric, mode).float().mean().item()


def inverse(masks: Masks, full: Masks | None = None, keep_full_on: Sequence[str] = ()) -> Masks:
    """The paper's inverse mask: only the weights the mask does not use. With `keep_full_on`,
    those tensors (typically the input and output layers) take the Full mask instead
    (the original's `inv_mask_exclude_io = fullmask` variant)."""
    inverted = ~masks
    if keep_full_on:
        if full is None:
            raise ValueError("keep_full_on needs the full mask")
        inverted = inverted.replace(full, keep_full_on)
    return inverted


def split_layers(names: Sequence[str], rounding: str = "ceil") -> tuple[list[str], list[str]]:
    """(early, late) halves of the masked tensors in the order given: the first ceil(L/2)
    (or floor(L/2)) tensors are early, as in the paper's half-mask test."""
    half = math.ceil(len(names) / 2) if rounding == "ceil" else len(names) // 2
    return list(names[:half]), list(names[half:])


def half_masks(masks: Masks, early: Sequence[str]) -> tuple[Masks, Masks]:
    """(mask on the early tensors only, mask on the others only); unlisted tensors stay full."""
    late = [n for n in masks if n not in set(early)]
    return masks.only(early), masks.only(late)
