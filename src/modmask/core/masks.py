"""`Masks`: a binary mask per parameter tensor, with set algebra and safe save/load (paper §1.6).

A `Masks` maps parameter names to bool tensors of the parameters' shapes. A parameter without an
entry is not masked (it keeps its full weights), so `~m` inverts only the listed tensors, which is
the paper's inverse mask. Files are safetensors (no pickle) whose metadata records every masked
name and shape, so loading against a different model is refused with a clear message.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open

FORMAT = "modmask.masks/1"


class Masks(Mapping):
    """Immutable mapping: parameter name -> bool tensor."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = {}
        for name, value in tensors.items():
            if value.dtype != torch.bool:
                raise TypeError(f"mask {name!r} has dtype {value.dtype}; masks are bool tensors "
                                f"(use Masks.from_logits for real-valued logits)")
            self._tensors[name] = value

    @classmethod
    def from_logits(cls, logits: Mapping[str, torch.Tensor]) -> "Masks":
        """The final binary mask: logit > 0 (strict, as the paper's analysis)."""
        return cls({n: l.detach() > 0 for n, l in logits.items()})

    # mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"Masks({len(self)} tensors, {self.count()}/{self.size()} kept, density {self.density():.4f})"

    # set algebra over masks of the same tensors
    def _combine(self, other: "Masks", op) -> "Masks":
        if set(self) != set(other):
            raise ValueError(f"masks cover different tensors: {sorted(set(self) ^ set(other))}; combine masks "
                             f"of the same model and parameter selection")
        check_same_tensors(self, other, "the left masks", "the right masks")  # bool ops would broadcast
        return Masks({n: op(self[n], other[n]) for n in self})

    def __or__(self, other: "Masks") -> "Masks":
        return self._combine(other, torch.logical_or)

    def __and__(self, other: "Masks") -> "Masks":
        return self._combine(other, torch.logical_and)

    def __sub__(self, other: "Masks") -> "Masks":
        return self._combine(other, lambda a, b: a & ~b)

    def __invert__(self) -> "Masks":
        return Masks({n: ~m for n, m in self.items()})

    def __eq__(self, other) -> bool:
        return (isinstance(other, Masks) and set(self) == set(other)
                and all(torch.equal(self[n], other[n]) for n in self))

    # restriction and replacement (half masks, inverse with full I/O layers)
    def only(self, names: Iterable[str]) -> "Masks":
        """The same masks on `names` only; other tensors become unmasked."""
        names = set(names)
        missing = names - set(self)
        if missing:
            raise KeyError(f"no mask for {sorted(missing)}; masked tensors: {list(self)}")
        return Masks({n: m for n, m in self.items() if n in names})

    def replace(self, other: "Masks", names: Iterable[str]) -> "Masks":
        """These masks with the tensors `names` taken from `other` (e.g. the Full mask)."""
        names = set(names)
        missing = sorted(n for n in names if n not in self or n not in other)
        if missing:
            raise ValueError(f"cannot replace tensors {missing}: not in both masks (masked tensors: {list(self)}); "
                             f"name tensors both masks cover")
        check_same_tensors({n: self[n] for n in names}, {n: other[n] for n in names}, "these masks", "the other masks")
        return Masks({n: (other[n] if n in names else m) for n, m in self.items()})

    # counts
    def counts(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.items()}

    def sizes(self) -> dict[str, int]:
        return {n: m.numel() for n, m in self.items()}

    def densities(self) -> dict[str, float]:
        return {n: int(m.sum()) / m.numel() for n, m in self.items()}

    def count(self) -> int:
        return sum(self.counts().values())

    def size(self) -> int:
        return sum(self.sizes().values())

    def density(self) -> float:
        return self.count() / max(self.size(), 1)

    # files
    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as safetensors, with every name and shape in the metadata."""
        path = Path(path)
        shapes = {n: list(m.shape) for n, m in self.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file({n: m.contiguous().cpu() for n, m in self.items()}, str(tmp),
                  metadata={"format": FORMAT, "shapes": json.dumps(shapes)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None = None) -> "Masks":
        """Read a mask file; with `model`, refuse one made for another model."""
        meta = read_metadata(path, "mask")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a modmask mask file (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}); a logits file (masks/<name>.safetensors of a run) "
                             f"loads with TrainedMask.load(path).masks")
        masks = cls(load_file(str(path)))
        if model is not None:
            check_fits(masks, model, source=str(path))
        return masks


def read_metadata(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """The metadata of the safetensors file at `path` (a `kind` file, e.g. "mask" or "logits", as
    errors name it). Raises FileNotFoundError for a missing file and ValueError, naming the file
    and the fix, for one that is not safetensors (e.g. a torch.save checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{kind} file {path} is a directory, not a file: pass the .safetensors file in it")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as error:
        raise ValueError(f"{path} is not a safetensors file (a torch.save checkpoint?): {error}. A {kind} file "
                         f"is the .safetensors file modmask writes; pass that one (a dict of tensors saved with "
                         f"torch.save can be rewritten with safetensors.torch.save_file)") from None


def check_fits(masks: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str = "the mask",
               fix: str = "pass a mask made for this model, or the model it was made for") -> None:
    """The one check of masks (or any tensors by parameter name, e.g. initial logits) against a
    model, made before any model runs under them: raise ValueError naming the first tensor the model
    does not have or has in another shape, and `fix`."""
    params = dict(model.named_parameters())
    model_name = type(model).__name__
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"{source} does not fit the model ({model_name}), it was made for another model: "
                             f"it masks {name!r}, which this model does not have; {fix}")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(f"{source} does not fit the model ({model_name}), it was made for another model: "
                             f"{name!r} has shape {tuple(mask.shape)} in {source} but {tuple(params[name].shape)} "
                             f"in the model (a model of another size?); {fix}")


def top_masks(scores: Mapping[str, torch.Tensor], density: float, per_tensor: bool = False) -> Masks:
    """The weights with the highest scores (logits of a trained mask, or a baseline's importance),
    as a mask that keeps a `density` fraction of them, whatever the scores' signs.

    scores: parameter name -> [*shape] real scores. Pooled (default): round(density * N) weights of
    all N scored weights, highest first, so tensors keep different fractions; per_tensor:
    round(density * n) in every tensor of n. Ties are broken by position: the earlier tensor (in
    `scores` order), then the lower flat index, so a selection is reproducible.
    """
    return top_masks_ladder(scores, [density], per_tensor)[0]


def top_masks_ladder(scores: Mapping[str, torch.Tensor], densities: Sequence[float],
                     per_tensor: bool = False) -> list[Masks]:
    """`top_masks` at every density of a ladder, from one sort of the scores (a curve over density
    reads one ranking many times; sorting millions of weights once per density would dominate it).
    The masks are nested: each keeps the weights of every smaller density."""
    for density in densities:
        if not 0 < density <= 1:  # also refuses NaN
            raise ValueError(f"density must be in (0, 1] (a fraction of the masked weights), got {density}")
    flat = {n: s.detach().cpu().flatten() for n, s in scores.items()}

    def order(values: torch.Tensor) -> torch.Tensor:
        # [n] positions, highest score first; a stable sort of the negated scores keeps ties in position order
        return torch.sort(-values.double(), stable=True).indices

    def top(ranked: torch.Tensor, density: float) -> torch.Tensor:
        keep = torch.zeros(len(ranked), dtype=torch.bool)
        keep[ranked[:math.floor(density * len(ranked) + 0.5)]] = True
        return keep

    sizes = [len(v) for v in flat.values()]
    ladder = []
    if per_tensor:
        orders = {n: order(v) for n, v in flat.items()}
        for density in densities:
            ladder.append(Masks({n: top(orders[n], density).view(scores[n].shape) for n in flat}))
    else:
        pooled = order(torch.cat(list(flat.values()))) if flat else torch.zeros(0, dtype=torch.long)
        for density in densities:
            kept = dict(zip(flat, top(pooled, density).split(sizes)))
            ladder.append(Masks({n: kept[n].view(scores[n].shape) for n in flat}))
    return ladder


MATCHES = ("tensor", "pooled")  # how a random mask matches a mask's size: in every tensor, or in total


def random_masks(masks: Masks, generator: torch.Generator | int = 0, within: Masks | None = None,
                 match: str = "tensor") -> Masks:
    """Masks with as many kept weights as `masks`, at uniformly random positions (the reference of
    the chance levels and of the random controls).

    match: "tensor" (default) keeps the mask's count in every tensor; "pooled" keeps its total count,
    drawn uniformly over the weights of all its tensors together, so each tensor's count varies
    from draw to draw (about its share of the weights) while the total is exact (docs/controls.md:
    per tensor is the control for overlap and layer-local claims, pooled for whole-network removal).
    generator: a `torch.Generator` (CPU; draws advance it) or an int seed. within: draw the positions
    only among the weights `within` keeps (e.g. the Full mask, for a control that removes weights
    the network uses): per tensor, or pooled over them all; it needs at least as many as `masks` keeps.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be 'tensor' (the mask's count in every tensor) or 'pooled' (its total "
                         f"count over all its tensors), not {match!r}")
    if not isinstance(generator, torch.Generator):
        generator = torch.Generator().manual_seed(int(generator))
    if within is not None:
        check_same_tensors(masks, within, "the masks", "within")
    # [n] flat positions each tensor may draw from
    pools = {name: (torch.arange(mask.numel()) if within is None else within[name].flatten().cpu().nonzero().squeeze(1))
             for name, mask in masks.items()}
    if match == "pooled":
        return _random_pooled(masks, pools, generator)
    drawn = {}
    for name, mask in masks.items():
        k, pool = int(mask.sum()), pools[name]
        if k > len(pool):
            raise ValueError(f"tensor {name!r}: the mask keeps {k} weights but `within` keeps only "
                             f"{len(pool)} there, so no random mask of that size fits inside it")
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[pool[torch.randperm(len(pool), generator=generator)[:k]]] = True
        drawn[name] = flat.view(mask.shape).to(mask.device)
    return Masks(drawn)


def _random_pooled(masks: Masks, pools: dict[str, torch.Tensor], generator: torch.Generator) -> Masks:
    """random_masks(match="pooled"): the masks' total count drawn from all the pools together."""
    k, sizes = masks.count(), [len(pool) for pool in pools.values()]
    if k > sum(sizes):
        raise ValueError(f"the mask keeps {k} weights but `within` keeps only {sum(sizes)} in its tensors, so no "
                         f"random mask of that size fits inside it")
    chosen = torch.zeros(sum(sizes), dtype=torch.bool)  # over the pools, concatenated
    chosen[torch.randperm(len(chosen), generator=generator)[:k]] = True
    drawn = {}
    for (name, mask), pool, picked in zip(masks.items(), pools.values(), chosen.split(sizes)):
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[pool[picked]] = True
        drawn[name] = flat.view(mask.shape).to(mask.device)
    return Masks(drawn)


def check_same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], label_a: str = "a",
                       label_b: str = "b") -> None:
    """Raise ValueError naming the first tensor that one of two masks lacks or has in another shape."""
    for name in [*a, *(n for n in b if n not in a)]:
        if name not in a or name not in b:
            has, lacks = (label_a, label_b) if name in a else (label_b, label_a)
            raise ValueError(f"{label_a} and {label_b} do not match: tensor {name!r} is in {has} "
                             f"but not in {lacks} (masks of different models or parameter selections?); "
                             f"compare masks of one model with one parameter selection")
        if a[name].shape != b[name].shape:
            raise ValueError(f"{label_a} and {label_b} do not match: tensor {name!r} has shape "
                             f"{tuple(a[name].shape)} in {label_a} but {tuple(b[name].shape)} in {label_b} "
                             f"(masks of different models?); compare masks of one model")
