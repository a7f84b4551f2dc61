"""How much memory mask training needs, by part, before the first step runs.

One mask-training step holds, besides the frozen model: a logit per masked weight, Adam's two
moments and the logits' gradient (fp32), and for the samples that run together
(`samples_per_pass` of the K) one masked copy of every masked tensor (`samples_per_pass x |W|`)
with its 16-bit noise codes, the gradients of those copies, the activations those samples save
for the backward pass, and the straight-through backward's buffers of one tensor. Not all of it at
once: the step has two phases, and its peak is the larger of them.

- forward and backward of the model: the copies, their noise, the activations and the gradients of
  about two of the widest at a time, and the copies' gradients, which replace the copies as the
  backward goes (a node frees its saved copy once it has made that copy's gradient) and all exist
  at once at its end (autograd runs the straight-through nodes, made before the model's forward,
  only after every node of the model: it orders ready nodes by creation, latest first);
- straight-through backward: the activations and the copies are freed by then; the copies'
  gradients and noise wait for their node, the logits' gradients fill, and the node of the largest
  tensor holds its buffers.

Unit masks (core/units.py) train a logit per unit instead: U logits, each with its Adam moments,
gradient and noise. Rows and columns multiply their weights by the unit's sample, so their tensors
(|B| weights) get masked copies and copy gradients as |W| does, but no keep thresholds, layout
copies or per-weight constants. Heads and neurons multiply their projection's input instead (a gate
[s, F], fp32, and its gradient) and copy no weight at all; a gate saves the input it multiplies for
its gradient, and the frozen projection after it then saves none, so the probe below runs with the
gates in place.

The activations are measured, not guessed: one probe forward of one sample's slice of the batch,
on the path the step takes (vmap over one sample: batching rules save other tensors than a plain
call, e.g. convolutions), counts the bytes autograd saves (`torch.autograd.graph.saved_tensors_hooks`),
scaled by the samples per pass.

    held     = model + copies + 12 (|W| + U)                                 [+ 2 x unmasked params in bf16]
    forward  = s c |C| + 2 s (|W| + U) + 8 s F + s c n_max + s (A_1 + 2 a_1)  [+ 2 |W| when s < K]
    straight = 4 (|W| + U) + s c |C| + 2 s (|W| + U) + 8 s F + buffers        [+ 2 |W| when s < K]
    buffers  = max(n_W (16 + g s), n_max g s)
    bytes    = held + max(forward, straight)                                 on a GPU (allocated tensors)
    bytes    = 3/2 (held + max(forward, straight))                           on the CPU (resident memory)

with |W| the weights masked one by one, U the units, |C| = |W| + |B| the weights copied per sample,
F the gated features, s the samples per pass, c the bytes of the forward's float type (4 fp32, 2
bf16; a copy and its gradient), A_1 one sample's saved activations, a_1 the largest of them, n_max
the largest copied tensor and n_W the largest masked weight by weight, g the straight-through
backward's bytes per weight and sample (8 in fp32: the soft samples' numerator and sigmoid's
gradient; 12 in bf16: also the gradient's fp32 cast) besides 16 per weight (the soft samples' four
per-weight constants), and `copies` the trainer's transposed copies of the matrices masked weight by
weight (kept so their gradients arrive without a copy; see docs/performance.md). Each logit costs
4 + 8 + 4 bytes (logit, Adam, gradient) and 2 per sample (noise), the 2 |W| are the keep thresholds
the groups of a step share. With M masks trained together the per-logit parts count M times (s
counts the samples of all of them). Plain weight masks have U = |B| = F = 0 and n_W = n_max.

The CPU and a GPU differ in what their peak counts. A GPU's caching allocator hands a freed block
to the next request that fits in it, and `torch.cuda.max_memory_allocated` counts live tensors: the
larger phase. On the CPU the peak is the process's resident memory, and glibc's heap (best fit;
with modmask.allocator.keep_freed_memory never trimmed and no block below 1 GB mapped on its own)
only grows: blocks freed between requests of other sizes leave holes that later blocks fill only in
part. prepare's forwards and the first step leave such holes, the first step's end puts Adam's
moments and the logits' gradients into them, the second step grows the heap again, and then it
stays (mlp-800x4 over 40 steps, gpt-512x4 over 15; the CNN's crept 5% from step 5 to 30). Traced
call by call (every malloc and free, and mallinfo2) on the 17 memory lines of
benchmarks/mask_step.py, the heap ended at 1.31 to 1.51 times the plan's live peak (held + the
larger phase; the LSTM's at 2.2: its step holds more than the plan counts); the resident memory,
which also counts the code of the kernels the step first runs, at 1.34 to 1.89 times, 1.46 in the
median. The CPU plan adds half the live peak for these holes (`heap retention`): a ratio of the
allocator, measured, not a count of tensors, so the CPU plan is the less certain one.
docs/performance.md gives the errors, docs/scaling.md applies the formula to large models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .batches import as_arguments, split_batch, unpack_batch, without_cache
from .masking import call_vmap, call_with_tensors, frozen_parameters, parameter_slots
from .removal import shifted
from .selection import ParameterFilter, is_conv1d, owners, select_parameters
from .units import broadcast_names, gate_features, plan_units

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
SAFETY = 0.9  # the share of free memory a plan may use (fragmentation, the allocator's blocks)


def _megabytes(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GB"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


@dataclass(frozen=True)
class MemoryPlan:
    """The bytes of each part of one mask-training step (`parts`) and their `total`."""

    model: int                 # bytes of the model's parameters and buffers
    copies: int                # bytes of the trainer's transposed copies of masked matrices
    masked: int                # |W|: number of weights masked one by one (a logit each)
    largest: int               # elements of the largest tensor copied per sample (weight, row or column masks)
    activations_per_sample: int | None  # bytes one sample's forward saves; None: not probed
    k: int
    samples_per_pass: int
    dtype: torch.dtype = torch.float32
    largest_activation: int = 0  # bytes of the largest tensor one sample's forward saves
    unmasked: int = 0            # elements of the unmasked float parameters (bf16 copies)
    masks: int = 1               # masks trained together (a joint stage: k counts all their samples)
    device: str = "cpu"          # the device type: the CPU's peak also counts heap retention
    units: int = 0               # U: logits of unit masks, one per row, column, head or neuron
    broadcast: int = 0           # |B|: weights of the tensors masked by rows or columns (copied, no logit each)
    gated: int = 0               # F: input features the samples of heads and neurons multiply (a gate)
    largest_weight: int | None = None  # elements of the largest tensor masked weight by weight; None: `largest`

    @property
    def parts(self) -> dict[str, int]:
        """Bytes of each part; the phases say which of them exist at the same time."""
        s, c = self.samples_per_pass, torch.finfo(self.dtype).bits // 8
        g = 8 if c == 4 else 12  # bf16: the straight-through backward also casts the gradient to fp32
        logits = self.masks * (self.masked + self.units)  # per mask: a logit per weight or per unit
        copied = self.masked + self.broadcast  # heads and neurons gate an input: no copy of their weights
        largest_weight = self.largest if self.largest_weight is None else self.largest_weight
        parts = {
            "frozen weights": self.model,
            "weight copies": self.copies,
            "logits": 4 * logits,
            "optimizer": 8 * logits,  # Adam's two moments
            "unmasked bf16 copies": 2 * self.unmasked if self.dtype == torch.bfloat16 else 0,
            "logit gradients": 4 * logits,
            "masked copies": s * c * copied,
            # all held at the end of the backward, until the straight-through nodes run
            "copy gradients": s * c * copied,
            "noise": s * 2 * (self.masked + self.units),  # int16 codes, saved for the backward
            "thresholds": 2 * self.masks * self.masked if s < self.k else 0,  # int16, shared by the groups of a step
            # heads' and neurons' samples repeated over the features they gate ([s, F] fp32) and their gradients
            "gates": 8 * s * self.gated,
            "activations": s * (self.activations_per_sample or 0),
            # the backward's gradients of activations: about two of the widest at a time
            "activation gradients": 2 * s * self.largest_activation,
            # the largest tensor's straight-through node (gumbel._StraightThroughMask.backward): the soft
            # samples' four fp32 constants per weight and mask, and per sample the soft samples' numerator
            # and sigmoid's gradient (fp32; in bf16 also the gradient's fp32 cast); a row or column mask's
            # node has no per-weight constants and about as many per-sample buffers (the copy's gradient
            # times W, cast to fp32 and copied by the slice assignment's backward)
            "backward buffers": max((16 * self.masks + g * s) * largest_weight, g * s * self.largest),
        }
        # glibc's heap ends about half as large again as the most the tensors hold at once: the holes
        # that blocks freed between requests of other sizes leave (see the module docstring)
        live = sum(parts[name] for name in self.HELD) + max(self.phases(parts).values())
        parts["heap retention"] = live // 2 if self.device == "cpu" else 0
        return parts

    HELD = ("frozen weights", "weight copies", "logits", "optimizer", "unmasked bf16 copies")

    def phases(self, parts: dict[str, int]) -> dict[str, int]:
        """Bytes each phase of a step holds besides the parts held between steps (HELD)."""
        s, c = self.samples_per_pass, torch.finfo(self.dtype).bits // 8
        return {
            # a node frees its saved copy once it has made that copy's gradient: copies and their
            # gradients together are at most all copies and the largest one's gradient
            "forward and backward": sum(parts[n] for n in ("masked copies", "noise", "thresholds", "gates",
                                                          "activations", "activation gradients"))
                                    + s * c * self.largest,
            "straight-through backward": sum(parts[n] for n in ("logit gradients", "copy gradients", "noise",
                                                               "thresholds", "gates", "backward buffers")),
        }

    @property
    def total(self) -> int:
        """The step's peak: what is held between steps and the larger phase; on the CPU also the
        heap's holes (heap retention; see the module docstring)."""
        parts = self.parts
        return sum(parts[name] for name in self.HELD) + max(self.phases(parts).values()) + parts["heap retention"]

    @property
    def resident(self) -> int:
        """Bytes that exist once the trainer is built (model, copies, logits)."""
        parts = self.parts
        return parts["frozen weights"] + parts["weight copies"] + parts["logits"]

    @property
    def needed(self) -> int:
        """Bytes the first step still has to allocate."""
        return self.total - self.resident

    def with_settings(self, *, samples_per_pass: int | None = None, dtype: torch.dtype | None = None) -> "MemoryPlan":
        """The plan with other settings (activations scale with the float size: an estimate)."""
        activations, largest = self.activations_per_sample, self.largest_activation
        if dtype is not None:
            scale = lambda n: n * (torch.finfo(dtype).bits // 8) // (torch.finfo(self.dtype).bits // 8)  # noqa: E731
            activations, largest = (None if activations is None else scale(activations)), scale(largest)
        return dataclasses.replace(self, samples_per_pass=samples_per_pass or self.samples_per_pass,
                                   dtype=dtype or self.dtype, activations_per_sample=activations,
                                   largest_activation=largest)

    def summary(self) -> str:
        """One line: the total, then every non-zero part and the phases."""
        parts = ", ".join(f"{name} {_megabytes(n)}" for name, n in self.parts.items() if n)
        parts += "; peak of " + " or ".join(f"{name} {_megabytes(n)}" for name, n in self.phases(self.parts).items())
        probed = "" if self.activations_per_sample is not None else " (activations not probed: no batch)"
        masks = f"{self.masks} masks, " if self.masks > 1 else ""
        units = f", {self.units:,} units" if self.units else ""
        return (f"memory plan: {_megabytes(self.total)} on {self.device} = {parts}; {masks}k={self.k}, "
                f"samples_per_pass={self.samples_per_pass}, {str(self.dtype).replace('torch.', '')}, "
                f"{self.masked:,} masked weights{units}{probed}")

    __str__ = summary


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32 / torch.bfloat16, or the precision names 'fp32' / 'bf16'."""
    if isinstance(dtype, str):
        if dtype not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {dtype!r}")
        return PRECISIONS[dtype]
    if dtype not in PRECISIONS.values():
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, not {dtype}")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """The forward's context: nothing for fp32, torch.autocast for bf16 (checked on the device)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} "
                         f"has none: use precision='fp32' (and samples_per_pass=1 to save memory)")
    available = getattr(torch.amp, "is_autocast_available", lambda t: t in ("cpu", "cuda"))
    if not available(device.type):
        raise ValueError(f"precision='bf16' needs torch.autocast, which {device.type} does not support: "
                         f"use precision='fp32'")
    return torch.autocast(device.type, dtype=dtype)


def low_precision(others: dict[str, torch.Tensor], low: torch.dtype, path: str) -> dict[str, torch.Tensor]:
    """bf16 copies of the unmasked tensors: under vmap a bias kept in fp32 would promote every
    linear layer's bf16 output back to fp32 (autocast does not see the add); on the sequential
    path vectors stay fp32 (CPU layer norm refuses a bf16 weight with an fp32 input)."""
    return {n: p.to(low) if p.is_floating_point() and (path == "vmap" or p.dim() >= 2) else p for n, p in others.items()}


def fp32_outputs(outputs: Any) -> Any:
    """The model's outputs with every float tensor in fp32 (the loss is computed in fp32)."""
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, outputs)


_VIEWS = {"TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "ExpandBackward0",
          "UnsqueezeBackward0", "AliasBackward0", "ReshapeAliasBackward0"}  # (vmap reshapes batched weights)


def _is_weight_cast(tensor: torch.Tensor, leaves: set[int]) -> bool:
    """Whether `tensor` is (a view of) autocast's cast of one of the leaves (ids)."""
    node = tensor.grad_fn
    while node is not None and type(node).__name__ in _VIEWS:
        node = node.next_functions[0][0]
    if node is None or type(node).__name__ != "ToCopyBackward0":
        return False
    source = node.next_functions[0][0]
    while source is not None and type(source).__name__ in _VIEWS:  # (vmap casts a transposed view of the leaf)
        source = source.next_functions[0][0]
    return getattr(source, "variable", None) is not None and id(source.variable) in leaves


def saved_bytes(forward, exclude: set[int], leaves: set[int]):
    """(bytes autograd saves for the backward while `forward()` runs, the largest storage's bytes,
    its result).

    Each storage counts once; storages in `exclude` (data pointers: the weights) do not count,
    nor do autocast's casts of the leaves (ids in `leaves`), which stand in for masked copies.
    """
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in exclude and not _is_weight_cast(tensor, leaves):
            seen.setdefault(pointer, storage.nbytes())
        # not the tensor itself: an output saved by its own node (relu saves its result) would hold
        # that node through the tensor's grad_fn, a cycle in C++ that no garbage collection frees, and
        # the probe's activations would stay for the whole training
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    return sum(seen.values()), max(seen.values(), default=0), result


def probe_activations(model: nn.Module, names: list[str], args: tuple, dtype: torch.dtype = torch.float32,
                      kwargs: dict | None = None, batched: bool = True, gates: dict[str, int] | None = None
                      ) -> tuple[int, int]:
    """(bytes, largest tensor's bytes) one sample's forward on `args` and `kwargs` (one sample's
    slice of the batch, [1, B/k, ...] when `batched`, else [B/k, ...]) saves for the backward, with
    gradients to the tensors `names` and to the gates of heads and neurons (`gates`: module path ->
    input features, as units.gate_features gives them) as in mask training, plus its outputs.

    batched: run it as the vmap path does, vmap over one sample with the masked tensors [1, *shape]
    (batching rules save other tensors than a plain call: a convolution's input in another layout);
    else one plain call, as the sequential path makes."""
    params = frozen_parameters(model)
    for name in names:  # detached leaves: the model gets nothing; [1, *shape] views of the weights under vmap
        params[name] = (params[name].unsqueeze(0) if batched else params[name]).requires_grad_(True)
    device = next(iter(params.values())).device
    # a gate multiplies its module's input and wants a gradient, so that input is saved (the
    # module's own input then is not, where its weight is frozen): [1, F] under vmap, [F] otherwise
    ones = {path: torch.ones((1, features) if batched else (features,), device=device, requires_grad=True)
            for path, features in (gates or {}).items()}
    # weights, gates and the batch exist before the step: not activations
    kwargs = without_cache(model, kwargs or {})
    exclude = {t.untyped_storage().data_ptr() for t in [*params.values(), *ones.values(), *model.buffers(),
                                                         *tree_leaves(args), *tree_leaves(kwargs)]
               if isinstance(t, torch.Tensor)}
    leaves = {id(params[name]) for name in names}
    # the model's own randomness (dropout, teacher forcing) must not see the probe
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast(device, dtype):
        if batched:
            masked = {name: params.pop(name) for name in names}
            # under bf16 the step passes bf16 copies of the unmasked tensors (low_precision), so does the probe
            others = low_precision(params, dtype, "vmap") if dtype != torch.float32 else params
            forward = lambda: call_vmap(model, masked, others, (args, kwargs), {"gates": ones})  # noqa: E731
        else:
            slots = parameter_slots(model)  # tied weights set once each (as in masked calls)

            def forward():
                with shifted(model, {"gates": ones}, None):
                    return call_with_tensors(model, slots, params, args, kwargs)
        saved, largest, outputs = saved_bytes(forward, exclude, leaves)
    outputs = [t.nbytes for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]
    return saved + sum(outputs), max([largest, *outputs])


def transposed_matrices(model: nn.Module, names) -> set[str]:
    """The matrices among `names` that the trainer keeps transposed ([in, out] in memory, a layout
    copy each): the gradient of a matrix used as `x @ W.t()` then arrives in that layout, so the
    backward reads it without a copy. Hugging Face's Conv1D (GPT-2) already stores [in, out] and
    computes `x @ W`: its weights stay as they are, with no copy."""
    params, holders = dict(model.named_parameters()), owners(model)
    return {n for n in names if params[n].dim() == 2 and not is_conv1d(holders.get(n))}


def memory_plan(model: nn.Module, *, k: int = 4, batch=None, parameters: ParameterFilter = None,
                biases: bool = False, norms: bool = True, samples_per_pass: int | None = None,
                dtype: torch.dtype | str = torch.float32, chunks=None, path: str = "auto",
                granularity="weight", heads: int | None = None) -> MemoryPlan:
    """The memory one mask-training step of `model` needs, by part (see the module docstring), on the
    device of the model's parameters.

    batch: an example batch as train_mask gets it ((inputs, targets), inputs a tensor [B, ...], a
        tuple or a dict of keyword arguments); one sample's slice (B/k examples) runs one probe
        forward to measure the activations. Without it the activations are left out of the plan.
        chunks: instead of batch, its inputs already split (split_batch).
    parameters / biases / norms / granularity / heads: the masked tensors and what one logit stands
        for, as in train_mask (MaskConfig; core/units.py). samples_per_pass: samples
        run together (default k). dtype: the forward's float type, torch.float32 or
        torch.bfloat16 (or 'fp32' / 'bf16'). path: the step's path ('auto' and 'vmap': the probe runs
        under vmap, and as one plain call where vmap fails on the model; 'sequential': a plain call).
    """
    dtype = as_dtype(dtype)
    names = select_parameters(model, parameters, biases=biases, norms=norms)
    weight_names, units = plan_units(model, names, granularity, heads)
    copied = [*weight_names, *broadcast_names(units)]  # the tensors a step copies per sample
    gates = gate_features(units)
    params = dict(model.named_parameters())
    activations, largest = None, 0
    if batch is not None and chunks is None:
        chunks, _ = split_batch(as_arguments(unpack_batch(batch)[0]), k)
    if chunks is not None:
        args, kwargs = chunks
        for batched in ((True, False) if path != "sequential" else (False,)):
            # the first sample's slice: [1, B/k, ...] for vmap, [B/k, ...] for a plain call
            def first(a, batched=batched):
                return (a[:1] if batched else a[0]) if isinstance(a, torch.Tensor) and a.dim() else a

            try:
                activations, largest = probe_activations(model, copied, tuple(first(a) for a in args), dtype,
                                                         {n: first(a) for n, a in kwargs.items()}, batched, gates)
                break
            except Exception:  # noqa: BLE001 (vmap fails on this model: the step takes the sequential path)
                if not batched:
                    raise
    return MemoryPlan(
        model=sum(t.nbytes for t in [*model.parameters(), *model.buffers()]),
        copies=sum(params[n].nbytes for n in transposed_matrices(model, weight_names)),
        masked=sum(params[n].numel() for n in weight_names),
        largest=max((params[n].numel() for n in copied), default=0),
        largest_weight=max((params[n].numel() for n in weight_names), default=0),
        activations_per_sample=activations, k=k, samples_per_pass=samples_per_pass or k, dtype=dtype,
        largest_activation=largest,
        # the step's bf16 copies (low_precision) are of every float tensor not masked weight by weight
        unmasked=sum(p.numel() for n, p in params.items() if n not in weight_names and p.is_floating_point()),
        device=params[names[0]].device.type, units=sum(u.count for u in units),
        broadcast=sum(params[n].numel() for n in broadcast_names(units)), gated=sum(gates.values()))


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`: CUDA's free memory plus blocks PyTorch's
    allocator holds unused; on the CPU the free physical memory the OS reports (os.sysconf; a lower
    bound, as the page cache it could reclaim is not counted), None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):  # not a POSIX system
            return None
    return None


def divisors(k: int) -> list[int]:
    return [d for d in range(1, k + 1) if k % d == 0]


def fit_samples_per_pass(plan: MemoryPlan, free: int | None) -> int:
    """The most samples per pass of each mask (a divisor of its k) whose plan fits in `free` bytes;
    k if unknown. (A joint plan's k and samples_per_pass count the samples of all its masks.)"""
    k = plan.k // plan.masks
    if free is None:
        return k
    fitting = [d for d in divisors(k) if plan.with_settings(samples_per_pass=d * plan.masks).needed <= SAFETY * free]
    return max(fitting, default=1)


def check_fits_device(plan: MemoryPlan, device: torch.device, free: int | None) -> None:
    """On a CUDA device, a MemoryError naming the settings that would fit, when the plan does not."""
    if device.type != "cuda" or free is None or plan.needed <= SAFETY * free:
        return
    fixes = []
    fewer = plan.with_settings(samples_per_pass=plan.masks)  # one sample of each mask per pass
    if plan.samples_per_pass > plan.masks:
        fits = fit_samples_per_pass(plan, free)
        needs = plan.with_settings(samples_per_pass=fits * plan.masks).needed
        fixes.append(f"samples_per_pass={fits} (needs {_megabytes(needs)})")
    if plan.dtype != torch.bfloat16:
        fixes.append(f"precision='bf16' (needs about {_megabytes(fewer.with_settings(dtype=torch.bfloat16).needed)} "
                     f"at samples_per_pass=1)")
    if plan.masks > 1:
        fixes.append(f"fewer masks per stage than {plan.masks} (execution.joint=false trains them one at a time)")
    fixes.append("fewer selected tensors (parameters=..., e.g. the MLP weights only): each masked weight "
                 "costs 24 bytes (logit, its gradient, Adam, a layout copy) plus 6 per sample per pass in "
                 "bf16 (a copy, its gradient, its noise; 10 in fp32)")
    raise MemoryError(f"mask training needs {_megabytes(plan.needed)} more on {device} but "
                      f"{_megabytes(free)} is free ({plan.summary()}); change: " + "; or ".join(fixes))
