"""Importance scores of the cheap pruning heuristics: the baselines a trained mask is compared with
at the same size (a mask of density d keeps the d fraction of weights with the highest scores).

    scores = importance(model, "wanda", list(trained.logits), eval_batches)
    masks = top_masks(scores, trained.masks.density(), per_tensor=False)   # or per_tensor=True

- magnitude: |w|.
- wanda (Sun et al. 2023): |w_ij| * ||x_j||_2, x_j the j-th input feature of the weight's layer over
  every row it sees (examples and positions) when the unmasked model runs on `batches`. Wanda's paper
  compares weights within each output row; here the comparison is `top_masks`' (pooled or per tensor).
  What x is, by the module that holds the parameter, is inputs.py's (Linear, Hugging Face Conv1D,
  convolutions per input channel, embeddings, norm gains, the project's LSTM cells; a bias scores
  |b| sqrt(rows), its input being the constant 1); nn.LSTM / nn.GRU and nn.MultiheadAttention are
  refused with a message (use 'magnitude' or 'taylor' for those).
- taylor: |w * dL/dw|, the first-order Taylor estimate of the loss change when w is removed, with
  the loss gradient averaged over `batches`.
- random: uniform [0, 1) scores, so the top fraction is a uniformly random subset (per tensor: the
  random control matched per tensor).

Nothing of the model is changed: hooks and a torch-function mode only read what flows through it,
gradients are taken of detached tensors (the parameters' .grad and requires_grad stay as they were),
and in mode 'train' the buffers (BatchNorm's running statistics) are put back afterwards.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .batches import describe_output
from .inputs import Inputs, buffers_kept, kind_of, model_inputs, read_inputs
from .masking import call_with_tensors, frozen_parameters, model_mode, parameter_slots, parameters_restored
from .selection import owners, select_parameters
from .units import Units, expand_masks, unit_scores

BASELINES = ("magnitude", "wanda", "taylor", "random")



def importance(model: nn.Module, method: str, names: Sequence[str], batches: Iterable | None = None,
               loss_fn: Callable | None = None, *, seed: int = 0, mode: str = "eval",
               min_examples: int = 8, units: Sequence[Units] = ()) -> dict[str, torch.Tensor]:
    """parameter name -> [*shape] float32 scores on the CPU, higher = more important, for the named
    parameters (e.g. trained_mask.names or select_parameters(model)), in the order of `names`.

    method: one of BASELINES. batches (wanda, taylor): the data, as collect takes it ((inputs,
    targets) or a dict of keyword arguments), iterated once; together at least `min_examples`
    examples (dim 0 of the inputs). loss_fn(outputs, targets) -> scalar mean loss (taylor).
    seed: the random scores' generator. mode: the model's mode while the data runs ('eval': no dropout).
    Parameters on a GPU are scored there.
    units: the unit sets of a unit mask (TrainedMask.units; their parameters among `names`): the
    baseline then ranks the same units, each unit's score (the mean of its weights' scores; random:
    one uniform draw per unit) on all its weights, so its top fraction is whole units (but at one cut).
    """
    if units:
        claimed = {s.name for u in units for s in u.spans}
        lacking = sorted(claimed - set(names))
        if lacking:
            raise ValueError(f"importance with units needs all their parameters; {lacking} are not in `names`")
        if method == "random":  # one draw per unit, not the mean of its weights' draws (which would favour small units)
            generator = torch.Generator().manual_seed(seed)
            params = dict(model.named_parameters())
            per_entry = {**{n: torch.rand(params[n].shape, generator=generator) for n in names if n not in claimed},
                         **{u.name: torch.rand(u.count, generator=generator) for u in units}}
        else:
            per_entry = unit_scores(importance(model, method, names, batches, loss_fn, seed=seed, mode=mode,
                                               min_examples=min_examples), units)
        weights = expand_masks(per_entry, units)
        return {n: weights[n] for n in names}
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose one of {BASELINES}")
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    select_parameters(model, names)  # refuses unknown names (listing the model's) and an empty list
    if mode not in ("eval", "train"):
        raise ValueError(f"model mode must be 'eval' or 'train', not {mode!r}")
    params = dict(model.named_parameters())
    if method == "magnitude":
        return {n: params[n].detach().abs().float().cpu() for n in names}
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {n: torch.rand(params[n].shape, generator=generator) for n in names}
    if batches is None:
        raise ValueError(f"importance({method!r}) needs `batches`: the data whose "
                         f"{'input norms' if method == 'wanda' else 'loss gradients'} it measures (e.g. the "
                         f"evaluation batches); 'magnitude' and 'random' need none")
    if method == "wanda":
        return _wanda(model, names, batches, mode, min_examples)
    if loss_fn is None:
        raise ValueError("importance('taylor') needs `loss_fn(outputs, targets)`, the loss whose gradient it "
                         "measures (the task loss the mask was trained with)")
    return _taylor(model, names, batches, loss_fn, mode, min_examples)


# ---- wanda ----

def _wanda(model: nn.Module, names: list[str], batches: Iterable, mode: str, min_examples: int) -> dict:
    seen = read_inputs(model, names, batches, mode=mode, min_examples=min_examples, what="importance('wanda')",
                       fix=". Use 'magnitude' or 'taylor' for those, or leave them out of `names`")
    params, holders = dict(model.named_parameters()), owners(model)
    return {n: _wanda_score(params[n].detach(), n, kind_of(holders[n]), holders[n], seen).float().cpu() for n in names}


def _wanda_score(p: torch.Tensor, name: str, kind: str, owner: nn.Module, seen: Inputs) -> torch.Tensor:
    """|w| * the norm of what w multiplies, in the parameter's shape."""
    p = p.abs().double()
    if name not in seen.squares:  # a bias: its input is the constant 1 at every row
        return p * math.sqrt(seen.rows[name])
    norms = seen.squares[name].sqrt().to(p.device)
    if kind == "norm":  # already |gamma_j| ||x_hat_j||
        return norms.view(p.shape)
    if kind == "conv":
        # A convolution is translation-equivariant: every kernel position of a filter multiplies the
        # same input channel at shifted positions, which see that channel's statistics (up to the
        # borders), so every weight from input channel j gets ||x_j|| over examples and positions.
        groups, out = owner.groups, p.shape[0]
        per_group = norms.view(groups, -1).repeat_interleave(out // groups, dim=0)  # [out, in / groups]
        return p * per_group.view(*per_group.shape, *[1] * (p.dim() - 2))
    # Linear: [out, in]; Conv1D and Embedding: [in, out]
    feature_dim = seen.feature_dim.get(name, 0 if kind in ("conv1d_hf", "embedding") else 1)
    return p * (norms[None, :] if feature_dim == 1 else norms[:, None])


# ---- taylor ----

def _taylor(model: nn.Module, names: list[str], batches: Iterable, loss_fn: Callable, mode: str,
            min_examples: int) -> dict:
    """|w * g|, g the mean over batches of each batch's loss gradient, taken of detached tensors in a
    functional call: the model's parameters get no .grad and keep their requires_grad."""
    tensors = frozen_parameters(model)
    leaves = [tensors[n].requires_grad_() for n in names]  # new tensor objects: the parameters' flags stay
    slots = parameter_slots(model)
    total = [torch.zeros_like(leaf, dtype=torch.float32) for leaf in leaves]
    count = 0
    with torch.enable_grad(), model_mode(model, mode), buffers_kept(model, mode), parameters_restored(model):
        for args, kwargs, targets in model_inputs(model, batches, "importance('taylor')", min_examples):
            outputs = call_with_tensors(model, slots, tensors, args, kwargs)
            loss = loss_fn(outputs, targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                raise ValueError(f"loss_fn must return a scalar tensor computed from the model's outputs (the "
                                 f"mean loss of the batch); got {describe_output(loss)}"
                                 f"{'' if not isinstance(loss, torch.Tensor) else ' without a gradient'}")
            grads = torch.autograd.grad(loss.reshape(()), leaves, allow_unused=True)
            for acc, grad in zip(total, grads):
                if grad is not None:  # a parameter the loss does not depend on: gradient 0
                    acc += grad.float()
            count += 1
    return {n: (tensors[n].detach().float() * acc / count).abs().cpu() for n, acc in zip(names, total)}
