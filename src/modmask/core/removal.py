"""How a removed weight is removed: set to zero (the paper's), or replaced by its mean contribution.

`zero`: a removed weight is 0. `mean`: a removed weight w_ij of a layer whose input is x contributes
w_ij E[x_j] instead of w_ij x_j, so the layer's mean pre-activation is kept and only what varies with
the input is removed (mean ablation, done in weight space as FLAP's bias compensation does). The
means E[x] are read from a reference set run through the *unmasked* model (inputs.py), and for every
supported kind the removed part folds into one offset on the layer's output,

    offset = contribution(W) - contribution(W_masked),   contribution linear in W:

    nn.Linear W [out, in], an LSTM cell's weight_ih / weight_hh [4H, in]:  W @ E[x]          [out]
    Hugging Face Conv1D W [in, out], nn.Embedding W [V, d]:              E[x] @ W          [out]
        (an embedding's input is the one-hot of the ids: E[x] = the frequency of each id)
    nn.ConvNd W [out, in/g, *k]: per input channel, sum_c,k W E[x_c]     [out], the same at every
        position. A convolution is translation-equivariant, and a per-channel mean keeps the offset
        a bias (per position, it would be a map [out, *spatial] tied to one input size); the two
        agree away from the zero-padded borders, where a per-position mean would see the padding.
    norm gains gamma [*shape]:                                       gamma * E[x_hat]  [*shape]
    a bias: its input is the constant 1, so E[1] = 1 and a removed bias is put back whole: mean
        removal never removes a bias (its mask has no effect and gets no gradient).

The offset is added to the layer's bias when it has one (so the result is exactly what a checkpoint
with that bias computes; an LSTM cell's go into its `bias`), otherwise to the layer's output by a
forward hook (a Linear without bias, an embedding, an RMSNorm). The offset is differentiable in the
masked weights, so masks train under mean removal on the same straight-through gradient.

A mode per tensor: `removal="mean"`, or rules `"pattern=mode,...,default"` (selection.per_tensor),
e.g. `"lstm.*=zero,mean"` for zero removal where the inputs cannot be read.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .inputs import KINDS, kind_of, read_inputs
from .selection import owners, per_tensor

REMOVALS = ("zero", "mean")


def removal_modes(removal: str | Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """name -> 'zero' or 'mean' for each named tensor (see the module docstring)."""
    return per_tensor(removal, names, REMOVALS, "removal")


@dataclass(frozen=True)
class Use:
    """How one parameter's removed part reaches its layer's output."""
    kind: str                  # inputs.kind_of: linear, conv1d_hf, conv, embedding, norm, cell, bias
    mean: torch.Tensor | None  # float32 mean input (per mask: [M, ...]); None for a bias
    target: str                # a bias parameter's name, or the path of the module whose output is shifted
    to_bias: bool              # whether `target` is a bias parameter
    channel_first: bool        # the output's features run along dim 1 (convolutions, BatchNorm, GroupNorm)
    groups: int = 1            # a convolution's groups
    spatial: int = 0           # a convolution's kernel dims
    module: str = ""           # the path of the layer (a Linear or Conv1D: its input is shifted, see offsets)

    @property
    def shifts_input(self) -> bool:
        """Whether the layer's input is shifted instead of its removed weights' contribution computed:
        W_m x + (W - W_m) E[x] = W_m (x - E[x]) + W E[x], so a Linear (or Conv1D) fed x - E[x] with
        the constant W E[x] added gives the same output with no work over the masked weights."""
        return self.kind in ("linear", "conv1d_hf") and bool(self.module)

    def contribution(self, weights: torch.Tensor) -> torch.Tensor:
        """weights [..., *shape] (the model's layout) -> what they add to the output at the mean
        input, [..., *out]; the mean's leading dims (per mask) broadcast with the weights'."""
        mean = self.mean.to(weights.dtype)
        if self.kind in ("linear", "cell"):
            return torch.matmul(weights, mean.unsqueeze(-1)).squeeze(-1)
        if self.kind in ("conv1d_hf", "embedding"):
            return torch.matmul(mean.unsqueeze(-2), weights).squeeze(-2)
        if self.kind == "conv":  # [..., out, in/g, *k] summed over the kernel, times each group's channel means
            summed = weights.sum(tuple(range(-self.spatial, 0)))  # [..., out, in/g]
            out = summed.shape[-2]
            per_group = mean.unflatten(-1, (self.groups, -1)).repeat_interleave(out // self.groups, dim=-2)
            return (summed * per_group).sum(-1)
        return weights * mean  # norm gains


class Reference:
    """The mean inputs of the parameters of one model, read on reference batches (`mean_inputs`):
    what mean removal needs. `uses[name]` says how parameter `name`'s removed part is put back."""

    def __init__(self, uses: dict[str, Use]):
        self.uses = uses

    def check(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self.uses]
        if missing:
            raise ValueError(f"the reference was read for {sorted(self.uses)} but mean removal needs {missing}; "
                             f"read it with mean_inputs(model, batches, names=...) naming every masked tensor")

    def only(self, names: Iterable[str]) -> "Reference":
        """The reference of the named tensors only (those removed by their mean)."""
        names = list(names)
        self.check(names)
        return Reference({n: self.uses[n] for n in names})

    def stacked(self, references: Sequence["Reference"]) -> "Reference":
        """One reference whose means hold each of `references`' as a leading dim [M, ...] (one per mask)."""
        uses = {n: dataclasses.replace(u, mean=None if u.mean is None else torch.stack([r.uses[n].mean for r in references]))
                for n, u in self.uses.items()}
        return Reference(uses)

    def repeated(self, rows: int) -> "Reference":
        """Each per-mask mean repeated `rows` times along its leading dim (mask m's samples are rows
        m rows .. m rows + rows - 1 of a call)."""
        uses = {n: dataclasses.replace(u, mean=None if u.mean is None else u.mean.repeat_interleave(rows, dim=0))
                for n, u in self.uses.items()}
        return Reference(uses)


def mean_inputs(model: nn.Module, batches: Iterable, names: Sequence[str] | None = None, *,
                mode: str = "eval") -> Reference:
    """Read, on `batches` through the unmasked model, the mean input of every named parameter (default:
    every parameter of a supported kind), for mean removal. A parameter modmask cannot read is refused
    by name with the supported kinds; a tied parameter (one tensor used by two layers, e.g. an output
    layer tied to an embedding) too, since each use would need its own offset."""
    from .masking import parameter_slots  # (masking applies this module's offsets in every call)

    params = dict(model.named_parameters())
    holders = owners(model)
    if names is None:
        names = [n for n in params if kind_of(holders.get(n)) is not None]
    names = list(names)
    fix = (". Remove those with zero removal instead: removal='<pattern>=zero,mean' (first matching pattern "
           "wins), or mask only supported tensors")
    tied = [n for n, slots in parameter_slots(model).items() if n in names and len(slots) > 1]
    if tied:
        raise ValueError(f"mean removal: {tied} are used by more than one layer (tied: "
                         f"{[parameter_slots(model)[n] for n in tied]}), and each use would need its own offset{fix}")
    try:
        seen = read_inputs(model, names, batches, mode=mode, what="mean removal's reference", fix=fix)
    except (RuntimeError, TypeError, IndexError) as error:
        raise ValueError(f"mean removal: the reference batches do not fit the model ({type(error).__name__}: "
                         f"{str(error)[:200]}); pass batches of the model's inputs, as for evaluation") from error
    uses = {}
    for name in names:
        owner, own = holders[name], name.rpartition(".")[2]
        prefix = name[:len(name) - len(own)]
        kind = kind_of(owner)
        channel_first = kind == "conv" or (kind == "norm" and isinstance(
            owner, (nn.modules.batchnorm._NormBase, nn.GroupNorm)))
        if name not in seen.sums:  # a bias: put back whole, into itself
            uses[name] = Use("bias", None, name, True, channel_first)
            continue
        mean = seen.mean(name).float()
        if kind == "norm":  # read as gamma x_hat: E[x_hat] = E[gamma x_hat] / gamma (0 where gamma is 0)
            gamma = params[name].detach().float().reshape(-1)
            mean = torch.where(gamma != 0, mean / torch.where(gamma != 0, gamma, 1.0), 0.0).view(params[name].shape)
        if kind == "cell" and seen.feature_dim.get(name, 1) == 0:
            kind = "conv1d_hf"  # a cell weight kept as [in, 4H] (x @ W)
        bias = "bias" if kind == "cell" else own.replace("weight", "bias")
        has_bias = isinstance(owner._parameters.get(bias), torch.Tensor)
        if kind == "cell" and not has_bias:
            raise ValueError(f"mean removal: the LSTM cell of {name} has no `bias` to take the offset of its "
                             f"removed weights{fix}")
        uses[name] = Use(kind, mean.to(params[name].device), prefix + bias if has_bias else prefix.rstrip("."),
                         has_bias, channel_first, getattr(owner, "groups", 1),
                         len(getattr(owner, "kernel_size", ())) if kind == "conv" else 0,
                         prefix.rstrip(".") if kind in ("linear", "conv1d_hf") else "")
    return Reference(uses)


def as_reference(model: nn.Module, reference, names: Sequence[str], mode: str = "eval") -> Reference:
    """A Reference from `reference`: one already read, or batches to read it on."""
    if isinstance(reference, Reference):
        reference.check(names)
        return reference
    if reference is None:
        raise ValueError("mean removal needs reference batches (the data whose mean inputs replace the removed "
                         "weights' inputs): pass reference=batches, or a Reference from mean_inputs")
    if iter(reference) is reference:
        reference = list(reference)
    if not reference:
        raise ValueError("mean removal's reference batches are empty: pass at least one batch")
    return mean_inputs(model, reference, names, mode=mode)


def offsets(reference: Reference, full: Mapping[str, torch.Tensor], masked: Mapping[str, torch.Tensor],
            tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """What mean removal changes in a call, for every mean-removed tensor of `masked` (name ->
    [..., *shape] in the model's layout; `full`: its unmasked weights [*shape]; `tensors`: the call's
    tensors, whose biases take the offsets): (biases: name -> bias + offsets [..., *out],
    shifts: {"outputs": module path -> offset [..., *out] of a layer without a bias, "inputs":
    module path -> E[x] [..., in], subtracted from a Linear's or Conv1D's input}). The leading dims
    (samples) of `masked` and of the means broadcast."""
    added: dict[tuple[str, bool], torch.Tensor] = {}
    inputs = {}
    for name, weights in masked.items():
        use = reference.uses[name]
        if use.kind == "bias":
            shift = full[name] - weights
        elif use.shifts_input:
            shift, inputs[use.module] = use.contribution(full[name]), use.mean
        else:
            shift = use.contribution(full[name]) - use.contribution(weights)
        key = (use.target, use.to_bias)
        added[key] = added[key] + shift if key in added else shift
    biases = {target: tensors[target] + shift for (target, to_bias), shift in added.items() if to_bias}
    outputs = {target: shift for (target, to_bias), shift in added.items() if not to_bias}
    return biases, {"outputs": outputs, "inputs": inputs}


@contextlib.contextmanager
def shifted(model: nn.Module, shifts: Mapping[str, Mapping[str, torch.Tensor]] | None,
            channel_first: Mapping[str, bool] | None):
    """Hooks that apply `offsets`' shifts while the model runs: outputs[path] added to that module's
    output (along dim 1 where channel_first[path], else the trailing dims), inputs[path] subtracted
    from its first input; and the samples of unit masks: gates[path] multiplied into its first input
    (with gate_means[path]: x g + E[x] (1 - g))."""
    def add(offset, first):
        def hook(_, __, output):
            return output + (offset.view(*offset.shape, *[1] * (output.dim() - 2)) if first else offset)
        return hook

    def subtract(mean):
        def hook(_, args):
            return (args[0] - mean.to(args[0].dtype), *args[1:])
        return hook

    def gate(kept, mean):
        def hook(_, args):
            x = args[0]
            gated = x * kept.to(x.dtype) if mean is None else torch.lerp(mean.to(x.dtype), x, kept.to(x.dtype))
            return (gated, *args[1:])
        return hook

    shifts = shifts or {}
    handles = [model.get_submodule(path).register_forward_hook(add(offset, (channel_first or {}).get(path, False)))
               for path, offset in shifts.get("outputs", {}).items()]
    handles += [model.get_submodule(path).register_forward_pre_hook(subtract(mean))
                for path, mean in shifts.get("inputs", {}).items()]
    # unit masks of heads and neurons (core/units.py): the input times each feature's sample, or under
    # mean removal x g + E[x] (1 - g)
    handles += [model.get_submodule(path).register_forward_pre_hook(gate(kept, shifts.get("gate_means", {}).get(path)))
                for path, kept in shifts.get("gates", {}).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def channel_first(reference: Reference) -> dict[str, bool]:
    return {u.target: u.channel_first for u in reference.uses.values() if not u.to_bias}


__all__ = ["REMOVALS", "KINDS", "Reference", "mean_inputs", "removal_modes"]
