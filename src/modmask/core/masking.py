"""Running an unmodified model under masks (paper §1.3, the "porting" the original needed).

The model object is never written to: every call goes through `torch.func.functional_call` with
a dict of (masked, detached) tensors, so the model's own parameters never receive gradients.
K mask samples run in one pass with `torch.vmap`, sample k on the k-th contiguous chunk of B/K
examples. Modules that vmap cannot batch (nn.LSTM's fused kernel, ...) run on the sequential path:
K functional calls, one per chunk, whose outputs are concatenated, so the loss and its gradients
are exactly those of the batched path.

Inputs and outputs are batch-first (batches.py: how batches are split and outputs rebuilt).
Key/value caches are not built: a model whose forward takes `use_cache` is called with
`use_cache=False` unless the batch says otherwise. PyTorch's fused attention kernels
(`nn.MultiheadAttention`, `nn.TransformerEncoderLayer`) have no backward and no vmap rule, so their
fast path is switched off around every masked training call. Every module attribute that holds a
parameter is swapped exactly once (`parameter_slots`), so a tied weight is masked wherever it is
used and the model gets its own tensors back.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from .batches import Arguments, OutputError, describe_output, flatten_output, without_cache
from .masks import check_fits
from .removal import Reference, as_reference, channel_first, offsets, removal_modes, shifted

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


def _tensors_of(output: Any) -> tuple[list[torch.Tensor], Callable]:
    """flatten_output, refusing an output with no tensor in it."""
    tensors, rebuild = flatten_output(output)
    if not tensors:
        raise OutputError(f"the model's output holds no tensor a loss could use (got {describe_output(output)}); "
                          f"return the logits, or pass arguments that make the model compute them")
    return tensors, rebuild


@contextlib.contextmanager
def fused_attention_disabled():
    """PyTorch's fused attention fast path off (it has no backward and no vmap rule); restores the
    user's setting of torch.backends.mha.set_fastpath_enabled afterwards."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


class _ContiguousAttention(torch.overrides.TorchFunctionMode):
    """nn.MultiheadAttention's inputs made contiguous before F.multi_head_attention_forward.

    With batch_first=True the layer hands that function transposed views [T, B, E]. ATen folds a
    3-D input of F.linear into one matrix product only when it is contiguous or the weight requires
    grad, which a weight batched by vmap does not report: the in-projection then broadcasts the
    [k, 3E, E] weights to [k, T, 3E, E] and runs ~50x slower. A contiguous copy is folded."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.multi_head_attention_forward:
            query, key, value = args[:3]
            query_c = query.contiguous()
            key_c = query_c if key is query else key.contiguous()  # keep `is`: it selects the packed projection
            value_c = key_c if value is key else value.contiguous()
            args = (query_c, key_c, value_c, *args[3:])
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def parameters_restored(model: nn.Module):
    """Check that the functional calls inside left every parameter of the model in place.

    functional_call swaps tensors in by name and puts the originals back; a model that keeps a
    parameter where those names do not lead would be left holding the swapped-in tensor. Such
    parameters are put back here, then the model is refused."""
    held = [(module, key, p) for module in model.modules() for key, p in module._parameters.items()]
    try:
        yield
    finally:
        left = [(module, key, p) for module, key, p in held if module._parameters.get(key) is not p]
        for module, key, p in left:
            module._parameters[key] = p
    if left:
        raise ValueError(f"torch.func.functional_call did not restore {len(left)} parameter(s) of "
                         f"{type(model).__name__} (modmask put them back): the model keeps them where the "
                         f"names from its named_parameters() do not lead; mask the plain model it wraps instead")


def parameter_slots(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name (as `named_parameters` gives it) -> one name for every module attribute that
    holds that parameter: itself, plus e.g. `lm_head.weight` for an output layer tied to an embedding.

    A functional call sets each attribute once by these names with tie_weights=False. torch's own
    tie handling (tie_weights=True) sets a module that is reachable under two names (one embedding
    module used as input and output) twice and then restores it to the swapped-in tensor."""
    slots: dict[int, dict[tuple[int, str], str]] = {}  # id(parameter) -> {(id(module), attribute): name}
    for path, module in model.named_modules(remove_duplicate=False):
        for key, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), {}).setdefault((id(module), key), f"{path}.{key}" if path else key)
    names = {}
    for name, p in model.named_parameters():
        path, _, key = name.rpartition(".")
        try:
            own = (id(model.get_submodule(path)), key)
        except AttributeError:
            own = None
        names[name] = [name] + [alias for slot, alias in slots.get(id(p), {}).items() if own and slot != own]
    return names


def call_with_tensors(model: nn.Module, slots: Mapping[str, list[str]], tensors: Mapping[str, torch.Tensor],
                      args, kwargs):
    """model(*args, **kwargs) with `tensors` (by parameter name) in place of its parameters."""
    swapped = {alias: t for name, t in tensors.items() for alias in slots.get(name, (name,))}
    return functional_call(model, swapped, args, kwargs, tie_weights=False)


def masked_call(model: nn.Module, masks: Mapping[str, torch.Tensor], *args, removal: str = "zero",
                reference=None, **kwargs):
    """The model's output with weights W * mask for every listed tensor, full weights elsewhere.
    Masks made for another model (a tensor it lacks, or another shape) are refused (check_fits).
    removal: 'zero', 'mean' or rules per tensor (removal.py); under mean removal the removed weights'
    mean contributions are read on `reference` (batches, or a Reference from mean_inputs; default:
    this call's own inputs)."""
    check_fits(masks, model)
    if reference is None and removal != "zero":  # this call's inputs, as one batch
        if args and kwargs:
            raise ValueError("mean removal reads its means on reference batches: pass reference=[batch] for a call "
                             "with both positional and keyword arguments")
        reference = [(kwargs, None)] if kwargs else [(args[0] if len(args) == 1 else tuple(args), None)]
    mean = mean_reference(model, masks, removal, reference)
    return call_masked(model, masks, args, kwargs, mean)


def mean_reference(model: nn.Module, masks: Iterable[str], removal, reference,
                   mode: str = "eval") -> Reference | None:
    """The Reference of the tensors of `masks` (masks by name, or the names) that `removal` removes by
    their mean, read on `reference` (batches, or a Reference), or None where it removes none by its mean."""
    names = [n for n, m in removal_modes(removal, list(masks)).items() if m == "mean"]
    return as_reference(model, reference, names, mode).only(names) if names else None


def call_masked(model: nn.Module, masks: Mapping[str, torch.Tensor], args, kwargs, mean: Reference | None = None):
    """masked_call for masks already checked against the model (check_fits), e.g. once per evaluation;
    `mean`: the Reference of the tensors removed by their mean (mean_reference)."""
    params = frozen_parameters(model)
    full = {name: params[name] for name in masks}
    for name, mask in masks.items():
        params[name] = params[name] * mask.to(params[name].device, params[name].dtype)
    shifts = None
    if mean is not None:
        biases, shifts = offsets(mean, full, {n: params[n] for n in mean.uses}, params)
        params.update(biases)
    with parameters_restored(model), shifted(model, shifts, mean and channel_first(mean)):
        return call_with_tensors(model, parameter_slots(model), params, args, kwargs)


def _batched_dims(values):
    """vmap in_dims: 0 for the split tensors, None for everything else."""
    dims = (0 if isinstance(v, torch.Tensor) and v.dim() > 1 else None for v in
            (values.values() if isinstance(values, dict) else values))
    return dict(zip(values, dims)) if isinstance(values, dict) else tuple(dims)


def call_vmap(model: nn.Module, weights: Mapping[str, torch.Tensor], others: Mapping[str, torch.Tensor],
              chunks: Arguments, shifts: Mapping[str, torch.Tensor] | None = None,
              channel_first: Mapping[str, bool] | None = None):
    """weights: name -> [k, *shape]; chunks from split_batch. Returns outputs [B, ...] (an output
    without a batch dimension, e.g. a loss the model computes itself, comes back as [k, ...]).
    shifts: removal.offsets' shifts of mean removal, each [k, ...] (one per sample)."""
    args, kwargs = chunks
    kwargs, slots = without_cache(model, kwargs), parameter_slots(model)
    rebuild: list[Callable] = []

    def one_sample(sample_weights, sample_shifts, sample_args, sample_kwargs):
        with shifted(model, sample_shifts, channel_first):
            output = call_with_tensors(model, slots, {**others, **sample_weights}, sample_args, sample_kwargs)
        tensors, rebuild_one = _tensors_of(output)
        rebuild[:] = [rebuild_one]
        return tuple(tensors)

    attention = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    with fused_attention_disabled(), _ContiguousAttention() if attention else contextlib.nullcontext():
        outputs = vmap(one_sample, in_dims=(0, 0, _batched_dims(args), _batched_dims(kwargs)),
                       randomness="different")(dict(weights), dict(shifts or {}), args, kwargs)
    return rebuild[0]([t.reshape(-1, *t.shape[2:]) for t in outputs])  # [k, B/k, ...] -> [B, ...]


def call_sequential(model: nn.Module, weights: Mapping[str, torch.Tensor],
                    others: Mapping[str, torch.Tensor], chunks: Arguments,
                    shifts: Mapping[str, torch.Tensor] | None = None, channel_first: Mapping[str, bool] | None = None):
    """Same result as call_vmap, as k separate calls; for modules vmap cannot batch."""
    k = next(iter(weights.values())).shape[0]
    args, kwargs = chunks
    kwargs, slots = without_cache(model, kwargs), parameter_slots(model)
    parts = []
    with fused_attention_disabled():
        for i in range(k):
            sample_args = tuple(a[i] if isinstance(a, torch.Tensor) and a.dim() > 1 else a for a in args)
            sample_kwargs = {n: a[i] if isinstance(a, torch.Tensor) and a.dim() > 1 else a for n, a in kwargs.items()}
            sample = {**others, **{n: w[i] for n, w in weights.items()}}
            sample_shifts = {kind: {path: s[i] for path, s in by_path.items()} for kind, by_path in (shifts or {}).items()}
            with shifted(model, sample_shifts, channel_first):
                tensors, rebuild = _tensors_of(call_with_tensors(model, slots, sample, sample_args, sample_kwargs))
            parts.append(tensors)
    return rebuild([torch.cat(ts) if ts[0].dim() else torch.stack(ts) for ts in zip(*parts)])


def unbatchable_modules(model: nn.Module) -> list[str]:
    """Names (and types) of submodules known to defeat vmap over their weights."""
    return [f"{name or '<model>'} ({type(m).__name__})" for name, m in model.named_modules()
            if isinstance(m, _UNBATCHABLE)]


def _same_outputs(model, weights, others, chunks) -> bool:
    """Whether the vmap and the sequential path give the same outputs on these chunks."""
    with torch.no_grad():
        batched, _ = flatten_output(call_vmap(model, weights, others, chunks))
        single, _ = flatten_output(call_sequential(model, weights, others, chunks))
    return len(batched) == len(single) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(batched, single))


def _vmap_problem(model, weights, others, chunks) -> str | None:
    """Why vmap cannot run this model, or None: known-bad modules, then a probe of both paths."""
    bad = unbatchable_modules(model)
    if bad:
        return f"{', '.join(bad)} cannot be batched over mask samples with torch.vmap"
    try:
        if _same_outputs(model, weights, others, chunks):
            return None
        if any(m.training for m in model.modules()):  # dropout draws differ between the paths
            with model_mode(model, "eval"):
                if _same_outputs(model, weights, others, chunks):
                    return None
        return "torch.vmap gives different outputs from separate calls for this model"
    except OutputError:
        raise
    except Exception as error:  # any failure of vmap means: not batchable
        if "data-dependent control flow" in str(error):
            return ("torch.vmap fails on this model: it branches on the values of a tensor (Hugging Face "
                    "models do so on a 2D attention_mask with padding; a 4D mask avoids it, see docs/real_models.md)")
        return f"torch.vmap fails on this model ({type(error).__name__}: {str(error)[:200]})"


def choose_path(model: nn.Module, weights: Mapping[str, torch.Tensor], others: Mapping[str, torch.Tensor],
                chunks: Arguments, path: str = "auto") -> str:
    """'vmap' or 'sequential' for this model: known-bad modules, then a probe that runs both
    paths on the first batch and compares their outputs (catches silent vmap fallbacks too)."""
    if path == "sequential":
        return path
    if path not in ("auto", "vmap"):
        raise ValueError(f"path must be 'auto', 'vmap' or 'sequential', not {path!r}")
    problem = _vmap_problem(model, weights, others, chunks)
    if problem is None:
        return "vmap"
    fix = ("use path='sequential' (exact, slower), or write the layer with plain tensor ops "
           "(e.g. modmask.models.LSTM instead of nn.LSTM)")
    if path == "vmap":
        raise ValueError(f"{problem}; {fix}")
    log.warning("modmask: %s; using the sequential path (K passes, same gradients, slower)", problem)
    return "sequential"
