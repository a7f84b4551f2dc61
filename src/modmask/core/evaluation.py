"""Evaluating the frozen model under masks, never modifying it (paper §1.6, §2.8).

Evaluation is deterministic: a mask is the boolean `logit > 0` (the original code uses `>= 0` in
evaluation and `> 0` in analysis; they differ only for logits exactly 0, and we use one rule).
Tensors without an entry in the masks keep their full weights. `random_control` gives the reference
of a mask or inverse-mask result: the same evaluation with random masks of the same per-tensor
counts, or of the same total count pooled over the tensors (docs/controls.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .batches import as_arguments, to_device, unpack_batch, without_cache
from .masking import call_masked, mean_reference, model_mode
from .removal import as_reference, removal_modes
from .masks import Masks, check_fits, random_masks
from .stats import summarize
from .units import Units, expand_masks

MetricFn = Callable[[Any, Any], torch.Tensor]


@torch.no_grad()
def collect(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, batches: Iterable,
            fn: MetricFn, mode: str = "eval", removal: str = "zero", reference=None) -> torch.Tensor:
    """fn(outputs, targets) -> [b, ...] per batch, concatenated along dim 0 (on the CPU). Batches
    as in train_mask: (inputs, targets), inputs a tensor, tuple or dict of keyword arguments, or a
    dict alone (targets None); models that take `use_cache` are called with use_cache=False.
    Masks made for another model are refused before the first batch (check_fits).
    removal: 'zero' (the paper's), 'mean' or rules per tensor (core/removal.py); under mean removal
    the means are read through the unmasked model on `reference` (batches, or a Reference from
    mean_inputs, which saves reading them again; default: `batches` themselves)."""
    masks = masks or {}
    check_fits(masks, model)
    if removal != "zero" and reference is None:
        batches = list(batches) if iter(batches) is batches else batches  # read twice: the means, then the metric
    mean = mean_reference(model, masks, removal, batches if reference is None else reference, mode)
    device = next(model.parameters()).device
    parts = []
    with model_mode(model, mode):
        for batch in batches:
            inputs, targets = unpack_batch(batch)
            args, kwargs = to_device(as_arguments(inputs), device)
            outputs = call_masked(model, masks, args, without_cache(model, kwargs), mean)
            parts.append(fn(outputs, to_device(targets, device)).cpu())
    if not parts:
        raise ValueError("no batch to evaluate on")
    return torch.cat(parts)


def evaluate(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, batches: Iterable,
             metric: MetricFn, mode: str = "eval", removal: str = "zero", reference=None) -> float:
    """Mean of a per-example metric (e.g. 1.0 for a correct prediction) under the masks (removal and
    reference as in collect)."""
    return collect(model, masks, batches, metric, mode, removal, reference).float().mean().item()


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


def random_control(model: nn.Module, masks: Masks, batches: Iterable, metric: MetricFn, draws: int = 5,
                   seed: int = 0, keep: bool = False, full: Masks | None = None,
                   keep_full_on: Sequence[str] = (), within: Masks | None = None, mode: str = "eval",
                   match: str = "tensor", removal: str = "zero", reference=None, units: Sequence[Units] = ()) -> dict:
    """The metric with random weights removed (or kept) instead of the mask's: the control of an
    inverse-mask (or mask) result. Returns {"mean", "std", "values", "draws", "match"} over `draws`
    random masks with as many weights as `masks`; std is the sample std (None for one draw). Draw r
    is the r-th mask from one generator seeded with `seed`, so the same seed gives the same values
    and more draws extend the list.

    match (random_masks): "tensor" (default) draws the mask's count in every tensor, the control
        of layer-local claims; "pooled" draws its total count uniformly over all its tensors (with
        keep_full_on: over the tensors where the mask is removed), the control of whole-network
        removal, which may hit a small, fragile tensor harder than the mask does (docs/controls.md).

    keep=False (random removal, next to `evaluate(model, inverse(masks, full, keep_full_on), ...)`):
        each draw R is removed exactly as the inverse removes the mask, `inverse(R, full,
        keep_full_on)`: on tensors in `keep_full_on` the Full mask is kept (as in the real inverse,
        so the control differs from it only where the mask was removed), everywhere else all
        weights but R's. `full` is used only with `keep_full_on`, as in `inverse`.
    keep=True (random keep, next to `evaluate(model, masks, ...)`): each draw is kept instead of
        the mask; `full` and `keep_full_on` do not apply.
    within: draw the random weights only among those `within` keeps (e.g. the Full mask: remove
        as many weights the network uses as the mask does, a stricter control than anywhere).
    batches: re-iterable (a list or a DataLoader), since every draw evaluates all of it.
    removal, reference: as in collect (the means are read once, for every draw).
    units: the unit sets of a unit mask (TrainedMask.units); `masks` and `within` are then its
        decisions keyed like its logits (TrainedMask.decisions), so each draw keeps random *units*
        (per unit set, or pooled over all its entries, a unit counting one) and is read as weights.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1 (the number of random masks R), got {draws}")
    if keep and keep_full_on:
        raise ValueError("keep_full_on applies to random removal only (keep=False): a kept random "
                         "mask replaces the mask itself, which has no Full-mask tensors")
    if iter(batches) is batches:
        raise ValueError("random_control evaluates the batches once per draw: pass a list or a "
                         "DataLoader, not an iterator or generator")
    check_fits(expand_masks(masks, units), model)
    if full is not None:
        check_fits(full, model, source="the full mask")
    generator = torch.Generator().manual_seed(seed)
    removed = [n for n in masks if n not in set(keep_full_on)]
    if removal != "zero":
        names = [n for n, m in removal_modes(removal, list(expand_masks(masks, units))).items() if m == "mean"]
        reference = as_reference(model, batches if reference is None else reference, names, mode)

    def draw() -> Masks:
        if match == "pooled" and keep_full_on:  # the inverse keeps the Full mask there: pool over the others
            pooled = random_masks(masks.only(removed), generator, within and within.only(removed), match)
            return Masks({**masks, **pooled})  # the keep_full_on tensors' entries are replaced by Full's
        return random_masks(masks, generator, within, match)

    values = []
    for _ in range(draws):
        drawn = Masks(expand_masks(draw(), units))
        condition = drawn if keep else inverse(drawn, full, keep_full_on)
        values.append(evaluate(model, condition, batches, metric, mode, removal, reference))
    summary = summarize(values)
    return {"mean": summary["mean"], "std": summary["std"], "values": values, "draws": draws, "match": match}


def split_layers(names: Sequence[str], rounding: str = "ceil") -> tuple[list[str], list[str]]:
    """(early, late) halves of the masked tensors in the order given: the first ceil(L/2)
    (or floor(L/2)) tensors are early, as in the paper's half-mask test."""
    half = math.ceil(len(names) / 2) if rounding == "ceil" else len(names) // 2
    return list(names[:half]), list(names[half:])


def half_masks(masks: Masks, early: Sequence[str]) -> tuple[Masks, Masks]:
    """(mask on the early tensors only, mask on the others only); unlisted tensors stay full."""
    unknown = [n for n in early if n not in masks]
    if unknown:
        raise ValueError(f"the early tensors {unknown} are not in the masks, which cover {list(masks)}; "
                         f"name early tensors among the masked ones (split_layers(list(masks)) gives the "
                         f"paper's halves)")
    late = [n for n in masks if n not in set(early)]
    return masks.only(early), masks.only(late)
