"""Masks that leave modmask: the pruned model in its own format, and a node circuit for MIB.

`export_pruned` writes the masked model so that it runs without modmask: a Hugging Face model by its
own `save_pretrained` (load it back with `from_pretrained`), any other model as a safetensors file of
its state dict (load it back with `model.load_state_dict(safetensors.torch.load_file(path))`). Under
mean removal a removed weight's mean contribution is folded into its layer's bias once and for all:

    exported bias = b + contribution(W) - contribution(W_m)     (Linear, Conv1D: b + (W - W_m) E[x])

with removal.py's `Use.contribution` and the means of `mean_inputs`, so the file computes what
`masked_call(model, masks, x, removal="mean", reference=...)` computes (the run-time path shifts a
Linear's input instead, W_m (x - E[x]) + W E[x]: the same function, other rounding). A layer with no
bias to hold an offset (Linear(bias=False), RMSNorm, an embedding) cannot be exported under mean
removal; remove its weights with zero removal (`removal="<pattern>=zero,mean"`).

`mib_circuit` writes the node circuit of the circuit-localization track of MIB (Mueller et al. 2025,
"MIB: A Mechanistic Interpretability Benchmark"; code github.com/hannamw/MIB-circuit-track): the JSON
of EAP-IG's `Graph.to_json`, which the track reads back with `Graph.from_json` (both in EAP-IG's
`eap/graph.py`, as vendored by the track; read in the copy github.com/yanivnik/MIB-shared-task,
EAP-IG/src/eap/graph.py, whose node-level selection keeps every node with a NaN score):

    {"cfg": {"n_layers": L, "n_heads": H, "parallel_attn_mlp": false, "d_model": D},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": true, "score": 1.3}, ..., "m0": {...},
               ..., "logits": {"in_graph": true}},
     "edges": {}}

Nodes: `input`, the heads `a{layer}.h{head}` and the MLP `m{layer}` of every layer, `logits`. A node
without a "score" stays unscored (NaN in MIB's graph), which MIB's node-level selection always keeps:
so are `input`, `logits` and any head or MLP the mask did not cover (its weights are all kept).
"edges" is empty: a node circuit; MIB derives the edges between the selected nodes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from .masking import frozen_parameters, mean_reference
from .masks import check_fits
from .removal import Reference, offsets
from .structure import UnitSet, _features, attention_heads, mlp_neurons


def pruned_parameters(model: nn.Module, masks: Mapping[str, torch.Tensor], *, removal="zero",
                      reference=None) -> dict[str, torch.Tensor]:
    """parameter name -> its exported value [*shape], for every parameter the masks change: W * mask,
    and under mean removal the biases that take the removed weights' mean contributions. `removal`
    and `reference` as for masked_call (mean removal needs `reference`: batches, or a Reference)."""
    check_fits(masks, model)
    params = frozen_parameters(model)
    masked = {n: params[n] * m.to(params[n].device, params[n].dtype) for n, m in masks.items()}
    mean = mean_reference(model, masks, removal, reference)
    if mean is None:
        return masked
    # only a tensor with a removed weight needs an offset; module="": fold W E[x] into the bias
    # instead of shifting the layer's input at run time (removal.Use.shifts_input)
    uses = {n: dataclasses.replace(u, module="") for n, u in mean.uses.items() if not bool(masks[n].all())}
    biases, shifts = offsets(Reference(uses), {n: params[n] for n in uses},
                             {n: masked[n] for n in uses}, {**params, **masked})
    if shifts["outputs"]:
        tensors = [n for n, u in uses.items() if not u.to_bias]
        raise ValueError(f"mean removal cannot be exported for {tensors}: their layers {sorted(shifts['outputs'])} "
                         f"have no bias to hold the removed weights' mean contribution (a Linear(bias=False), an "
                         f"RMSNorm, an embedding); remove their weights with zero removal instead, e.g. "
                         f"removal='{tensors[0]}=zero,mean' (patterns first, the first that matches wins)")
    return {**masked, **biases}


def export_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                  removal="zero", reference=None) -> Path:
    """Write the model with the masks applied, in its own format (module docstring): a model with
    `save_pretrained` (Hugging Face) as a copy saved into the folder `path`; any other model as the
    safetensors file `path` of its state dict (buffers included; a tensor tied to another is written
    under each of its names, so load_state_dict fills both). The model itself is left unchanged.
    Returns `path`."""
    changed = pruned_parameters(model, masks, removal=removal, reference=reference)  # refuses before writing
    path = Path(path)
    if hasattr(model, "save_pretrained"):
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            for name, value in changed.items():
                pruned.get_parameter(name).copy_(value)
        pruned.save_pretrained(path)
        return path
    by_id = {id(p): changed[n] for n, p in model.named_parameters() if n in changed}
    state = {key: by_id.get(id(value), value).detach().clone().contiguous()  # safetensors refuses shared memory
             for key, value in model.state_dict(keep_vars=True).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={"writer": "modmask.export_pruned", "removal": json.dumps(removal)})
    os.replace(partial, path)
    return path


def _unit_means(unit_set: UnitSet, logits: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, counts) [count] of the logits each unit owns: its entries of every slice whose parameter
    has logits, or one unit-level logit per unit (keyed by unit_set.name, shape [count]) when given."""
    if unit_set.name in logits:
        own = logits[unit_set.name].detach().float().cpu()
        if tuple(own.shape) != (unit_set.count,):
            raise ValueError(f"the logits of {unit_set.name!r} have shape {tuple(own.shape)}; a unit-level "
                             f"logit has one entry per unit: ({unit_set.count},)")
        return own, torch.ones(unit_set.count)
    sums, counts = torch.zeros(unit_set.count), torch.zeros(unit_set.count)
    for s in unit_set.slices:
        if s.name in logits:
            t = logits[s.name].detach().float().cpu()
            block = t.narrow(s.dim, s.start, unit_set.count * s.size).unflatten(s.dim, (unit_set.count, s.size))
            block = block.movedim(s.dim, 0).reshape(unit_set.count, -1)  # [count, entries per unit]
            sums, counts = sums + block.sum(1), counts + block.shape[1]
    return sums, counts


def _scores(attention: list[UnitSet], mlps: list[UnitSet], logits) -> dict[str, float]:
    scores = {}
    for unit_set in attention:
        sums, counts = _unit_means(unit_set, logits)
        for head in range(unit_set.count):  # NaN: no logit covers the head
            scores[f"a{unit_set.layer}.h{head}"] = float(sums[head] / counts[head]) if counts[head] else math.nan
    for unit_set in mlps:
        sums, counts = _unit_means(unit_set, logits)
        scores[f"m{unit_set.layer}"] = float(sums.sum() / counts.sum()) if counts.sum() else math.nan
    return scores


def node_scores(model: nn.Module, logits: Mapping[str, torch.Tensor], *, heads: int | None = None) -> dict[str, float]:
    """MIB node name -> score from a mask's logits (parameter name -> [*shape], as TrainedMask.logits;
    a unit-level logit keyed by a UnitSet.name, shape [count], is used directly): a head 'a{L}.h{H}'
    scores the mean logit over its slices (structure.attention_heads), an MLP 'm{L}' the mean over
    its neurons' slices. NaN for a node no logit covers. `heads`: as for attention_heads."""
    return _scores(attention_heads(model, heads), mlp_neurons(model), logits)


def mib_circuit(model: nn.Module, logits: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                heads: int | None = None, threshold: float = 0.0, parallel_attn_mlp: bool = False) -> dict:
    """Write the node circuit of a mask in MIB's format (module docstring) to the JSON file `path` and
    return it. Scores: node_scores; a node is in the circuit when its score > threshold (default: a
    positive mean logit) or it is unscored; `input` and `logits` always are. `parallel_attn_mlp`: the
    layers run attention and MLP side by side (GPT-J, NeoX), which MIB's graph needs to know."""
    attention, mlps = attention_heads(model, heads), mlp_neurons(model)
    counts = {u.count for u in attention}
    if not attention or len(attention) != len(mlps) or len(counts) != 1:
        raise ValueError(f"MIB's graph has one attention module of H heads and one MLP per layer; this model has "
                         f"{len(attention)} attention modules (heads: {[u.count for u in attention]}) and "
                         f"{len(mlps)} MLPs")
    scores = _scores(attention, mlps, logits)

    def node(score):
        if math.isnan(score):
            return {"in_graph": True}
        return {"in_graph": score > threshold, "score": score}

    nodes = {"input": {"in_graph": True}}
    for layer in range(len(attention)):
        nodes.update({f"a{layer}.h{h}": node(scores[f"a{layer}.h{h}"]) for h in range(attention[layer].count)})
        nodes[f"m{layer}"] = node(scores[f"m{layer}"])
    nodes["logits"] = {"in_graph": True}
    d_model = _features(model.get_submodule(attention[0].module))[1]
    circuit = {"cfg": {"n_layers": len(attention), "n_heads": counts.pop(), "parallel_attn_mlp": parallel_attn_mlp,
                       "d_model": d_model},
               "nodes": nodes, "edges": {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(circuit))
    return circuit


__all__ = ["export_pruned", "pruned_parameters", "node_scores", "mib_circuit"]
