"""Masks over units instead of single weights: one logit per row, column, attention head or MLP neuron.

`MaskConfig.granularity` says, per masked tensor, what one logit stands for (one value for every
tensor, or rules "pattern=value,...,default" as `selection.per_tensor` reads them):

    weight  one logit per weight (the paper's)
    row     one per output unit: a neuron of a Linear, a channel of a convolution, one unit of one
            LSTM gate (a row of weight_ih / weight_hh); Hugging Face's Conv1D stores [in, out], so
            its rows are its columns
    column  one per input unit (an input feature, an input channel)
    head    one per attention head: its query, key and value rows and its output-projection
            columns share the logit (core/structure.attention_heads)
    neuron  one per MLP hidden unit: its rows in the up (and gate) projection and its column in the
            down projection share the logit (core/structure.mlp_neurons)

How a unit's sample reaches the model. Rows and columns multiply their weights (the sample
broadcast over the unit's weights: exact, and K masked copies as weight masks make). Heads and
neurons multiply the *input* of the output (down) projection instead, one sample per head_dim
block (per hidden unit): everything a head's query, key and value rows compute reaches the rest of
the network only through that block, so zeroing it is zeroing all the head's weights (tested in
tests/core/test_units.py), with no masked copy of any weight. Under mean removal the block is
replaced by its mean (x g + E[x] (1 - g)), which is what mean removal of the projection's columns
gives, the query/key/value rows then being read by nothing.

A unit mask is read as weights wherever weights are needed (`expand`: evaluation, inverse masks,
removal, exports), and as units where its meaning is the unit (overlap, chance levels and random
controls of the same number of units). The regulariser and the density weigh a unit by the number
of masked weights it covers, so beta means what it means for weight masks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from . import structure
from .selection import is_conv1d, owners, per_tensor

GRANULARITIES = ("weight", "row", "column", "head", "neuron")


@dataclass(frozen=True)
class Span:
    """Where the units of a unit mask lie in one parameter: unit u covers the indices
    start + u size ... start + u size + size - 1 along dim `dim`."""
    name: str
    dim: int
    start: int
    size: int
    shape: tuple[int, ...]  # the parameter's shape


@dataclass(frozen=True)
class Units:
    """One unit mask: `count` logits, each standing for the weights its spans cover.

    gate: (module path, input features per unit) where the sample multiplies that module's input
    instead of the weights (heads and neurons), or None (rows and columns, and the heads of
    nn.MultiheadAttention, whose projection is not called as a module: the weights)."""
    name: str                     # the logits' key: the parameter's name (rows, columns) or the unit set's
    kind: str                     # row | column | head | neuron
    count: int
    spans: tuple[Span, ...]
    gate: tuple[str, int] | None = None
    layer: int | None = None      # heads and neurons: the transformer layer

    @property
    def covered(self) -> int:
        """Masked weights one unit covers."""
        return sum(s.size * _elements(s.shape, s.dim) for s in self.spans)

    def expand(self, kept: torch.Tensor, fill: float | bool = True) -> dict[str, torch.Tensor]:
        """kept: [..., count] (bool or float) -> parameter name -> [..., *shape], each unit's value on its
        weights and `fill` on a parameter's weights no unit of this set covers (True: kept)."""
        out = {}
        for span in self.spans:
            shape = span.shape
            lead = kept.shape[:-1]
            full = torch.full((*lead, *shape), fill, dtype=kept.dtype, device=kept.device)
            moved = full.movedim(len(lead) + span.dim, -1)  # a view: units along the last dim
            along = kept.repeat_interleave(span.size, dim=-1)  # [..., count size]
            view = [*lead] + [1] * (len(shape) - 1) + [along.shape[-1]]
            moved[..., span.start:span.start + along.shape[-1]] = along.view(view)
            out[span.name] = full
        return out

    @property
    def module(self) -> str:
        """The module the units belong to: the attention module or MLP block (heads, neurons), else the parameter."""
        return self.name.split(":")[0].rsplit(".", 1)[0] if self.kind in ("head", "neuron") else self.name

    def unit_names(self) -> list[str]:
        """A reader's name of every unit: 'layer 3 head 5', 'layer 2 neuron 1042', '<param> row 7'."""
        if self.kind in ("head", "neuron"):
            return [f"layer {self.layer} {self.kind} {u}" for u in range(self.count)]
        return [f"{self.name} {self.kind} {u}" for u in range(self.count)]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "Units":
        spans = tuple(Span(**{**s, "shape": tuple(s["shape"])}) for s in value["spans"])
        gate = tuple(value["gate"]) if value.get("gate") else None
        return cls(**{**value, "spans": spans, "gate": gate})


def _elements(shape, dim: int) -> int:
    """Elements of one index along `dim` (the product of the other dims)."""
    n = 1
    for i, size in enumerate(shape):
        if i != dim:
            n *= size
    return n


def _unit_dim(kind: str, owner: nn.Module | None, shape) -> int:
    """The dim of a parameter along which its rows (output units) or columns (input units) run."""
    if len(shape) < 2:
        raise ValueError(f"{kind} masks need a matrix or a convolution weight, not a tensor of shape {tuple(shape)}: "
                         f"give such tensors granularity 'weight'")
    transposed = is_conv1d(owner)  # Hugging Face's [in, out]
    return (1 if transposed else 0) if kind == "row" else (0 if transposed else 1)


def plan_units(model: nn.Module, names: Sequence[str], granularity, heads: int | None = None
               ) -> tuple[list[str], list[Units]]:
    """(the names masked weight by weight, the unit masks) of the selected tensors `names` under
    `granularity`. A head (neuron) set is used when one of its parameters is selected with 'head'
    ('neuron'); every selected parameter of the set must then say so, and its output (down)
    projection must be among them. Errors name the tensor and the fix before any work."""
    modes = per_tensor(granularity, names, GRANULARITIES, "granularity")
    params, holders = dict(model.named_parameters()), owners(model)
    weights = [n for n in names if modes[n] == "weight"]
    units = []
    for n in names:
        if modes[n] in ("row", "column"):
            dim = _unit_dim(modes[n], holders.get(n), params[n].shape)
            units.append(Units(n, modes[n], params[n].shape[dim], (Span(n, dim, 0, 1, tuple(params[n].shape)),)))
    for kind in ("head", "neuron"):
        wanted = [n for n in names if modes[n] == kind]
        if not wanted:
            continue

        sets = structure.attention_heads(model, heads) if kind == "head" else structure.mlp_neurons(model)
        claimed = set()
        for unit_set in sets:
            members = [s for s in unit_set.slices if s.name in set(names)]
            if not any(s.name in set(wanted) for s in members):
                continue
            other = [s.name for s in members if modes[s.name] != kind]
            module_weight = f"{unit_set.module}.weight"
            if other or module_weight not in set(wanted):
                raise ValueError(f"granularity '{kind}' of {unit_set.module}'s {kind}s: "
                                 + (f"{sorted(set(other))} are selected with another granularity" if other else
                                    f"its projection {module_weight} is not selected with '{kind}'")
                                 + f"; give every selected tensor of the {kind}s granularity '{kind}' "
                                   f"(e.g. granularity='*attn*={kind},weight')")
            claimed.update(s.name for s in members)
            # nn.MultiheadAttention reads its out_proj's weight without calling the module, so no hook
            # could gate its input: its heads multiply their weights instead (as rows and columns do)
            called = not isinstance(model.get_submodule(unit_set.module.rsplit(".", 1)[0]), nn.MultiheadAttention)
            units.append(Units(unit_set.name, kind, unit_set.count,
                               tuple(Span(s.name, s.dim, s.start, s.size, tuple(params[s.name].shape))
                                     for s in members),
                               (unit_set.module, unit_set.size) if called else None, unit_set.layer))
        stray = [n for n in wanted if n not in claimed]
        if stray:
            what = "an attention projection" if kind == "head" else "an MLP projection"
            raise ValueError(f"granularity '{kind}' does not fit {stray}: not part of {what} modmask recognises "
                             f"(core/structure.py); give them granularity 'weight', 'row' or 'column'")
    return weights, units


def broadcast_names(units: Sequence[Units]) -> list[str]:
    """The parameters of row and column masks, whose samples multiply the weights: each gets masked
    copies [K, *shape] as a weight-masked tensor does. (Heads and neurons gate an input instead and
    copy no weight.)"""
    return sorted({s.name for u in units if not u.gate for s in u.spans})


def gate_features(units: Sequence[Units]) -> dict[str, int]:
    """module path -> the input features that the samples of its heads or neurons multiply (one
    sample per `size` features, so the gate is [K, count size])."""
    return {u.gate[0]: u.count * u.gate[1] for u in units if u.gate}


def units_to_json(units: Sequence[Units]) -> str:
    return json.dumps([u.to_json() for u in units])


def units_from_json(text: str) -> list[Units]:
    return [Units.from_json(v) for v in json.loads(text)]


def expand_masks(values: Mapping[str, torch.Tensor], units: Sequence["Units"]) -> dict[str, torch.Tensor]:
    """Per-weight values (parameter name -> [*shape]) of values keyed like a unit mask's logits (a
    tensor masked weight by weight: [*shape]; a unit set: [count]), each unit's value on every weight
    it covers. bool (decisions): a weight two unit sets cover is kept only if both keep it; float
    (scores, e.g. logits read as a ranking): it takes the lower score, and a weight no unit covers +inf
    (never removed, as the decisions keep it)."""
    by_name = {u.name: u for u in units}
    out = {}
    for key, value in values.items():  # in the values' order, a unit set's parameters where the set is
        value, unit = value.detach(), by_name.get(key)
        is_bool = value.dtype == torch.bool
        expanded = unit.expand(value, True if is_bool else float("inf")) if unit else {key: value}
        for name, v in expanded.items():
            out[name] = ((out[name] & v) if is_bool else torch.minimum(out[name], v)) if name in out else v
    return out


def unit_scores(scores: Mapping[str, torch.Tensor], units: Sequence["Units"]) -> dict[str, torch.Tensor]:
    """Weight scores (parameter name -> [*shape], e.g. a baseline's importance) read as scores of a unit
    mask's entries: a unit set's [count] the mean score of each unit's weights, a tensor masked weight
    by weight as it is; keyed like the unit mask's logits (expand_masks reads them back as weights)."""
    claimed = {s.name for u in units for s in u.spans}
    out = {n: s for n, s in scores.items() if n not in claimed}
    for unit in units:
        total = torch.zeros(unit.count, dtype=torch.float64)
        for span in unit.spans:
            moved = scores[span.name].detach().cpu().double().movedim(span.dim, -1)  # units along the last dim
            block = moved[..., span.start:span.start + unit.count * span.size]
            total += block.reshape(-1, unit.count, span.size).sum((0, 2))
        out[unit.name] = (total / unit.covered).float()
    return out
