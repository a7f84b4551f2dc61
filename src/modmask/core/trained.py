"""A trained mask as it leaves the trainer: its logits (one per masked weight), the training history
and, where weights trained with the mask, those weights; read as binary masks (logit > 0) or at a
chosen density (the top fraction of the logits), saved as safetensors."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .masks import Masks, check_fits, read_metadata

LOGITS_FORMAT = "modmask.logits/1"


@dataclass
class TrainedMask:
    """The learned logits of one mask (parameter name -> [*shape]) and the training history; with
    weights that trained jointly with the mask (MaskTrainer's `trainable`), also the masked tensors'
    final weights (name -> [*shape]), which saving leaves out."""

    logits: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def masks(self) -> Masks:
        """The final binary mask, logit > 0."""
        return Masks.from_logits({n: l.detach().cpu() for n, l in self.logits.items()})  # analysis on the CPU

    def at_density(self, density: float, per_layer: bool = False) -> Masks:
        """The mask of a chosen size: the top `density` fraction of the logits, kept regardless of
        their sign (so masks of different functions can be compared at equal size).

        Pooled (default): round(density * N) weights of all N masked weights, highest logits first,
        so tensors keep different fractions; per_layer: round(density * n) in every tensor of n.
        Ties are broken by position: the earlier tensor (in `logits` order), then the lower flat index.
        """
        if not 0 < density <= 1:  # also refuses NaN
            raise ValueError(f"density must be in (0, 1] (a fraction of the masked weights), got {density}")
        logits = {n: l.detach().cpu().flatten() for n, l in self.logits.items()}

        def top(values: torch.Tensor) -> torch.Tensor:
            # A stable sort of the negated logits keeps equal logits in position order.
            keep = torch.zeros(len(values), dtype=torch.bool)
            keep[torch.sort(-values.double(), stable=True).indices[:math.floor(density * len(values) + 0.5)]] = True
            return keep

        if per_layer:
            kept = {n: top(v) for n, v in logits.items()}
        else:
            flat = top(torch.cat(list(logits.values())))
            kept = dict(zip(logits, flat.split([len(v) for v in logits.values()])))
        return Masks({n: kept[n].view(self.logits[n].shape) for n in logits})

    def probs(self) -> torch.Tensor:
        """[N] keep probabilities sigmoid(logits) of all masked weights, flattened."""
        return torch.cat([torch.sigmoid(l.detach()).flatten() for l in self.logits.values()])

    def save(self, path: str | os.PathLike) -> None:
        """Atomic safetensors file of the logits by parameter name."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({n: t.detach().contiguous().cpu() for n, t in self.logits.items()}, str(tmp),
                  metadata={"format": LOGITS_FORMAT, "names": json.dumps(list(self.logits))})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "TrainedMask":
        """Read a logits file; with `model`, refuse one made for another model."""
        meta = read_metadata(path, "logits")
        if meta.get("format") != LOGITS_FORMAT:
            raise ValueError(f"{path} is not a modmask logits file (format {meta.get('format')!r})")
        tensors = load_file(str(path))
        if model is not None:
            check_fits(tensors, model, source=str(path))
        return cls({n: tensors[n] for n in json.loads(meta["names"])})
