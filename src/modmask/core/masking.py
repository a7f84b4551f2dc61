"""Running an unmodified model under masks (paper §1.3, the "porting" the original needed).

The model object is never written to: every call goes through `torch.func.functional_call` with
a dict of (masked, detached) tensors, so the model's own parameters never receive gradients.
K mask samples run in one pass with `torch.vmap`, sample k on the k-th contiguous chunk of B/K
examples. Modules that vmap cannot batch (nn.LSTM's fused kernel, ...) run on the sequential path:
K functional calls, one per chunk, whose outputs are concatenated, so the loss and its gradients
are exactly those of the batched path.

Inputs and outputs are batch-first: every tensor argument is split along dim 0; non-tensor
arguments are passed through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

log = logging.getLogger(__name__)

_UNBATCHABLE = (nn.RNNBase,)  # fused cuDNN/ATen RNN kernels take weights as flat lists


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str = "eval"):
    """Temporarily put every submodule in eval or train mode; restores each module's own flag."""
    if mode not in ("eval", "train"):
        raise ValueError(f"model mode must be 'eval' or 'train', not {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def frozen_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """All parameters, detached (no copy): gradients can never reach the model's tensors."""
    return {n: p.detach() for n, p in model.named_parameters()}


def to_device(value, device):
    """Every tensor in a (nested) batch moved to `device`; other values unchanged."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def masked_call(model: nn.Module, masks: Mapping[str, torch.Tensor], *args, **kwargs):
    """The model's output with weights W * mask for every listed tensor, full weights elsewhere."""
    params = frozen_parameters(model)
    for name, mask in masks.items():
        params[name] = params[name] * mask.to(params[name].device, params[name].dtype)
    return functional_call(model, params, args, kwargs)


def split_batch(args: tuple, k: int) -> tuple[tuple, int]:
    """Every tensor argument [B, ...] -> [k, B/k, ...]; other arguments unchanged. Returns (chunks, B)."""
    sizes = {a.shape[0] for a in args if isinstance(a, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"tensor arguments must share one batch size (dim 0); got sizes {sorted(sizes)}")
    batch = sizes.pop()
    if batch < k or batch % k:
        raise ValueError(f"batch size {batch} must be a multiple of k={k} (each of the k mask samples "
                         f"gets B/k examples); choose a batch size divisible by k")
    chunks = tuple(a.view(k, batch // k, *a.shape[1:]) if isinstance(a, torch.Tensor) else a for a in args)
    return chunks, batch


def _merge(outputs: Any) -> Any:
    """[k, B/k, ...] -> [B, ...] for every tensor in an output structure."""
    return tree_map(lambda t: t.reshape(-1, *t.shape[2:]) if isinstance(t, torch.Tensor) else t, outputs)


def call_vmap(model: nn.Module, weights: Mapping[str, torch.Tensor], others: Mapping[str, torch.Tensor],
              chunks: tuple):
    """weights: name -> [k, *shape]; chunks from split_batch. Returns outputs [B, ...]."""

    def one_sample(sample_weights, *sample_args):
        return functional_call(model, {**others, **sample_weights}, sample_args)

    in_dims = (0, *(0 if isinstance(a, torch.Tensor) else None for a in chunks))
    return _merge(vmap(one_sample, in_dims=in_dims, randomness="different")(dict(weights), *chunks))


def call_sequential(model: nn.Module, weights: Mapping[str, torch.Tensor],
                    others: Mapping[str, torch.Tensor], chunks: tuple):
    """Same result as call_vmap, as k separate calls; for modules vmap cannot batch."""
    k = next(iter(weights.values())).shape[0]
    outputs = []
    for i in range(k):
        args = tuple(a[i] if isinstance(a, torch.Tensor) else a for a in chunks)
        outputs.append(functional_call(model, {**others, **{n: w[i] for n, w in weights.items()}}, args))
    return tree_map(lambda *ts: torch.cat(ts) if isinstance(ts[0], torch.Tensor) else ts[0], *outputs)


def unbatchable_modules(model: nn.Module) -> list[str]:
    """Names (and types) of submodules known to defeat vmap over their weights."""
    return [f"{name or '<model>'} ({type(m).__name__})" for name, m in model.named_modules()
            if isinstance(m, _UNBATCHABLE)]


def choose_path(model: nn.Module, weights: Mapping[str, torch.Tensor], others: Mapping[str, torch.Tensor],
                chunks: tuple, path: str = "auto") -> str:
    """'vmap' or 'sequential' for this model: known-bad modules, then a probe that runs both
    paths on the first batch and compares their outputs (catches silent vmap fallbacks too)."""
    if path == "sequential":
        return path
    if path not in ("auto", "vmap"):
        raise ValueError(f"path must be 'auto', 'vmap' or 'sequential', not {path!r}")
    problem = None
    bad = unbatchable_modules(model)
    if bad:
        problem = f"{', '.join(bad)} cannot be batched over mask samples with torch.vmap"
    else:
        try:
            with torch.no_grad():
                batched = call_vmap(model, weights, others, chunks)
                single = call_sequential(model, weights, others, chunks)
            same = tree_map(lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                            if isinstance(a, torch.Tensor) else True, batched, single)
            if not all(torch.utils._pytree.tree_leaves(same)):
                problem = "torch.vmap gives different outputs from separate calls for this model"
        except Exception as error:  # any failure of vmap means: not batchable
            problem = f"torch.vmap fails on this model ({type(error).__name__}: {str(error)[:200]})"
    if problem is None:
        return "vmap"
    fix = ("use path='sequential' (exact, slower), or write the layer with plain tensor ops "
           "(e.g. modmask.models.LSTM instead of nn.LSTM)")
    if path == "vmap":
        raise ValueError(f"{problem}; {fix}")
    log.warning("modmask: %s; using the sequential path (K passes, same gradients, slower)", problem)
    return "sequential"
