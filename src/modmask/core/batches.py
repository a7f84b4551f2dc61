"""A model's batches and outputs as modmask sees them: positional and keyword arguments in, any
nesting of tensors out (paper §1.3: K mask samples, each on its own B/K slice of the batch).

A batch is (inputs, targets), inputs a tensor, a tuple of positional arguments or a dict of
keyword arguments (Hugging Face style), or a dict of keyword arguments alone. Every tensor with a
batch dimension is split along dim 0 for the K samples; everything else is passed through. Outputs
may be tensors or nested tuples, lists and dicts of them, dict subclasses such as Hugging Face's
`ModelOutput` included (duck-typed: the core never imports transformers, and torch's pytree need not
know the class); other values in them (a key/value cache object) cannot cross vmap and come back as
None, while None, numbers and strings are kept.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map

_CONSTANTS = (type(None), bool, int, float, str)  # output values that are kept as they are

Arguments = tuple[tuple, dict]  # (positional, keyword) arguments of one model call


class OutputError(ValueError):
    """The model's output cannot be used for mask training (e.g. it holds no tensor)."""


def to_device(value, device):
    """Every tensor in a (nested) batch moved to `device`; other values unchanged."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def unpack_batch(batch) -> tuple[Any, Any]:
    """(inputs, targets) of a batch: a pair, or a dict of keyword arguments alone (Hugging Face
    style, labels inside; targets None, the loss reads e.g. `outputs.loss`)."""
    if isinstance(batch, Mapping):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be a pair (inputs, targets) or a dict of keyword arguments; got "
                     f"{type(batch).__name__}{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")


def as_arguments(inputs) -> Arguments:
    """A batch's inputs as (positional, keyword) arguments: a tensor -> one positional argument, a
    tuple -> positional arguments, a dict (or any mapping, e.g. HF's BatchEncoding) -> keyword arguments."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (inputs if isinstance(inputs, tuple) else (inputs,)), {}


def split_batch(arguments: Arguments, k: int) -> tuple[Arguments, int]:
    """Every tensor argument [B, ...] -> [k, B/k, ...] (positional and keyword alike); other arguments,
    0-dim tensors included, unchanged. Returns (chunks, B)."""
    args, kwargs = arguments
    named = {**{f"argument {i}": a for i, a in enumerate(args)}, **kwargs}
    sizes = {name: a.shape[0] for name, a in named.items() if isinstance(a, torch.Tensor) and a.dim()}
    if len(set(sizes.values())) != 1:
        found = ", ".join(f"{name}: {size}" for name, size in sizes.items()) or "no batched tensor"
        raise ValueError(f"the tensors of a batch's inputs must share one batch size (dim 0); got {found}")
    batch = next(iter(sizes.values()))
    if batch < k or batch % k:
        raise ValueError(f"batch size {batch} must be a multiple of k={k} (each of the k mask samples "
                         f"gets B/k examples); choose a batch size divisible by k")

    def split(a):
        return a.reshape(k, batch // k, *a.shape[1:]) if isinstance(a, torch.Tensor) and a.dim() else a

    return (tuple(split(a) for a in args), {n: split(a) for n, a in kwargs.items()}), batch


def without_cache(model: nn.Module, kwargs: dict) -> dict:
    """kwargs plus use_cache=False when the model's forward takes `use_cache` (HF decoders) and the
    caller did not set it: a key/value cache serves generation only, and it is no tensor vmap can return."""
    if "use_cache" in kwargs:
        return kwargs
    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature (C extension, ...)
        return kwargs
    return {**kwargs, "use_cache": False} if "use_cache" in accepted else kwargs


def _container(kind: type, items):
    """A container of type `kind` holding `items` (a dict for mappings, a list otherwise)."""
    if kind in (dict, list, tuple):
        return kind(items)
    if issubclass(kind, Mapping):
        try:
            return kind(**items)  # dataclass-like dicts such as ModelOutput take keyword arguments
        except TypeError:
            return kind(items)
    return kind(*items) if hasattr(kind, "_fields") else kind(items)  # namedtuple or list subclass


def flatten_output(value: Any) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """(tensors, rebuild): the tensors of a nested output (tuples, lists, dicts and dict subclasses
    such as ModelOutput) in order, and a function that builds the same structure around new tensors.
    None, numbers and strings are kept; every other value (a cache object, ...) is rebuilt as None."""
    tensors: list[torch.Tensor] = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            tensors.append(v)
            index = len(tensors) - 1
            return lambda ts: ts[index]
        if isinstance(v, Mapping):
            kind, parts = type(v), {key: walk(item) for key, item in v.items()}
            return lambda ts: _container(kind, {key: part(ts) for key, part in parts.items()})
        if isinstance(v, (tuple, list)):
            kind, parts = type(v), [walk(item) for item in v]
            return lambda ts: _container(kind, [part(ts) for part in parts])
        kept = v if isinstance(v, _CONSTANTS) else None
        return lambda ts: kept

    rebuild = walk(value)
    del walk  # it refers to itself through its cell: a cycle that would keep `tensors` alive until the gc runs
    return tensors, rebuild


def describe_output(value: Any) -> str:
    """A short description of an output's structure, for error messages: `ModelOutput(logits: [8, 3])`."""
    if isinstance(value, torch.Tensor):
        return str(list(value.shape))
    if isinstance(value, Mapping):
        return f"{type(value).__name__}({', '.join(f'{k}: {describe_output(v)}' for k, v in value.items())})"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}({', '.join(describe_output(v) for v in value)})"
    return type(value).__name__


# The batches of M masks trained together: one call of the model for all of them.
def target_rows(tensor, batch_size: int, start: int, stop: int):
    """Rows start..stop-1 of a target tensor [B, ...] (other values unchanged)."""
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if tensor.dim() == 0 or tensor.shape[0] != batch_size:
        raise ValueError(f"with samples_per_pass below k the targets are split along dim 0 like the inputs, but a "
                         f"target tensor has shape {tuple(tensor.shape)} for batch size {batch_size}; give targets "
                         f"[B, ...] or use samples_per_pass=k")
    return tensor[start:stop]


def joined(chunks_per_mask: list, lo: int, hi: int, k: int) -> tuple:
    """Samples lo..hi-1 of every mask's split arguments as one call's: tensors [k, B/k, ...] ->
    [M (hi - lo), B/k, ...]; other arguments must be the same for every mask."""
    take = (lambda a: a) if hi - lo == k else (lambda a: a[lo:hi] if isinstance(a, torch.Tensor) and a.dim() else a)
    if len(chunks_per_mask) == 1:
        args, kwargs = chunks_per_mask[0]
        return tuple(take(a) for a in args), {n: take(a) for n, a in kwargs.items()}
    args = tuple(join_values([take(c[0][i]) for c in chunks_per_mask]) for i in range(len(chunks_per_mask[0][0])))
    kwargs = {n: join_values([take(c[1][n]) for c in chunks_per_mask]) for n in chunks_per_mask[0][1]}
    return args, kwargs


def join_values(values: Sequence[Any]) -> Any:
    if isinstance(values[0], torch.Tensor) and values[0].dim():
        shapes = {tuple(v.shape[1:]) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"the masks' batches have inputs of different shapes per sample {sorted(shapes)} "
                             f"(e.g. sequences padded to other lengths); one trainer needs one shape: give "
                             f"`collate` (run_study, train_masks) a function that pads them alike, or "
                             f"train the masks one at a time (execution.joint=False)")
        return torch.cat(values)
    if any(v is not values[0] and not (isinstance(v, torch.Tensor) and torch.equal(v, values[0])) and v != values[0]
           for v in values[1:]):
        raise ValueError("a non-batched argument (e.g. a step count or flag) differs between the masks' batches; "
                         "one trainer calls the model once for all of them")
    return values[0]


def split_outputs(outputs: Any, sizes: list[int], samples: int) -> list:
    """The joint output [sum B_m, ...] split back into each mask's [B_m, ...] (same structure); an
    output per sample without a batch dimension (a loss the model computes itself) [M samples, ...]
    into each mask's [samples, ...]; anything else is given to every mask."""
    if len(sizes) == 1:
        return [outputs]
    tensors, rebuild = flatten_output(outputs)
    per_sample = [samples] * len(sizes)
    pieces = [t.split(sizes) if t.dim() and t.shape[0] == sum(sizes) else
              t.split(per_sample) if t.dim() and t.shape[0] == sum(per_sample) else [t] * len(sizes) for t in tensors]
    return [rebuild([p[m] for p in pieces]) for m in range(len(sizes))]
