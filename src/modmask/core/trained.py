"""A trained mask as it leaves the trainer: its logits (one per masked weight), the training history
and, where weights trained with the mask, those weights; read as binary masks (logit > 0) or at a
chosen density (the top fraction of the logits), saved as safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .masks import Masks, check_fits, read_metadata, top_masks
from .units import Units, expand_masks, units_from_json, units_to_json

LOGITS_FORMAT = "modmask.logits/1"


@dataclass
class TrainedMask:
    """The learned logits of one mask (parameter name -> [*shape]) and the training history; with
    weights that trained jointly with the mask (MaskTrainer's `trainable`), also the masked tensors'
    final weights (name -> [*shape]), which saving leaves out. diagnosis: the stage's verdict on the
    mask (core/density.diagnose: settled, on its target, function kept, with the fixes), kept in the file.
    removal: the removal mode it was trained in ('zero', 'mean' or rules per tensor), kept in the file:
    a mask means what it does in that mode (evaluate it with removal=trained.removal). units: its
    unit masks (core/units.py), whose logits are keyed by unit name; `masks` reads them as weights."""

    logits: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None
    diagnosis: dict | None = None
    removal: str = "zero"
    units: list[Units] = field(default_factory=list)

    @property
    def masks(self) -> Masks:
        """The final binary mask over weights, logit > 0 (a unit's decision on every weight it covers)."""
        return Masks(expand_masks(self.decisions, self.units))

    @property
    def decisions(self) -> Masks:
        """The decisions keyed like the logits, logit > 0: a tensor masked weight by weight [*shape], a
        unit set [count] (the same as `masks` for weight masks). Where the unit is what a mask means
        (random controls drawing random units, overlap of units), read this with `units`."""
        return Masks.from_logits({n: l.detach().cpu() for n, l in self.logits.items()})  # analysis on the CPU

    @property
    def unit_masks(self) -> Masks:
        """The unit masks' decisions only, unit set name (or parameter name, for rows and columns) -> bool [count]."""
        return self.decisions.only(u.name for u in self.units)

    @property
    def scores(self) -> dict[str, torch.Tensor]:
        """The logits read as a ranking of the masked weights (parameter name -> [*shape]): a unit's
        logit on every weight it covers, so the top weights are whole units (but at one cut)."""
        return expand_masks({n: l.detach().cpu() for n, l in self.logits.items()}, self.units)

    @property
    def names(self) -> list[str]:
        """The masked parameters (what `masks` and `scores` are keyed by), in the model's order."""
        spans = {u.name: [s.name for s in u.spans] for u in self.units}
        return list(dict.fromkeys(p for n in self.logits for p in spans.get(n, [n])))

    def at_density(self, density: float, per_layer: bool = False) -> Masks:
        """The mask of a chosen size: the top `density` fraction of the masked weights by their logits
        (a unit's on all its weights), kept regardless of their sign (so masks of different functions
        can be compared at equal size); `top_masks` says how (pooled over all masked weights by
        default, or per_layer in every tensor)."""
        return top_masks(self.scores, density, per_tensor=per_layer)

    def probs(self) -> torch.Tensor:
        """[N] keep probabilities sigmoid(logits) of all masked weights, flattened."""
        return torch.cat([torch.sigmoid(l.detach()).flatten() for l in self.logits.values()])

    def save(self, path: str | os.PathLike) -> None:
        """Atomic safetensors file of the logits by parameter name."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({n: t.detach().contiguous().cpu() for n, t in self.logits.items()}, str(tmp),
                  metadata={"format": LOGITS_FORMAT, "names": json.dumps(list(self.logits)),
                            "removal": self.removal, **({"units": units_to_json(self.units)} if self.units else {}),
                            **({"diagnosis": json.dumps(self.diagnosis)} if self.diagnosis else {})})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "TrainedMask":
        """Read a logits file; with `model`, refuse one made for another model."""
        meta = read_metadata(path, "logits")
        if meta.get("format") != LOGITS_FORMAT:
            raise ValueError(f"{path} is not a modmask logits file (format {meta.get('format')!r})")
        tensors = load_file(str(path))
        units = units_from_json(meta["units"]) if "units" in meta else []
        if model is not None:
            unit_names = {u.name for u in units}
            check_fits({n: t for n, t in tensors.items() if n not in unit_names}, model, source=str(path))
        diagnosis = json.loads(meta["diagnosis"]) if "diagnosis" in meta else None
        return cls({n: tensors[n] for n in json.loads(meta["names"])}, diagnosis=diagnosis,
                   removal=meta.get("removal", "zero"), units=units)  # (files before modmask 0.4: zero, weights)
