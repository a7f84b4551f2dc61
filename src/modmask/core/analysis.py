"""Comparing masks: overlap, sharing, exclusive weights, stability, probabilities (paper §2.1, §2.6).

Free functions over `Masks`. Totals pool all tensors (sum of intersections over sum of unions,
...). A ratio with an empty denominator is reported as 0.0.
"""

from __future__ import annotations

import itertools
import statistics
from functools import reduce
from typing import Mapping, Sequence

import torch

from .masks import Masks


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _per_layer(a: Masks, b: Masks, score) -> dict[str, float]:
    if set(a) != set(b):
        raise ValueError(f"masks cover different tensors: {sorted(set(a) ^ set(b))}")
    return {n: score(a[n], b[n]) for n in a}


def _pooled(a: Masks, b: Masks, num, den) -> float:
    return _ratio(sum(num(a[n], b[n]) for n in a), sum(den(a[n], b[n]) for n in a))


def _inter(x, y):
    return int((x & y).sum())


def _union(x, y):
    return int((x | y).sum())


def _smaller(x, y):
    return min(int(x.sum()), int(y.sum()))


def iou(a: Masks, b: Masks, per_layer: bool = False):
    """Intersection over union |a & b| / |a | b|; a float, or name -> float."""
    if per_layer:
        return _per_layer(a, b, lambda x, y: _ratio(_inter(x, y), _union(x, y)))
    return _pooled(a, b, _inter, _union)


def iomin(a: Masks, b: Masks, per_layer: bool = False):
    """Intersection over the smaller mask |a & b| / min(|a|, |b|). The total pools the layers:
    sum of intersections over min(sum |a|, sum |b|)."""
    if per_layer:
        return _per_layer(a, b, lambda x, y: _ratio(_inter(x, y), _smaller(x, y)))
    return _ratio(sum(_inter(a[n], b[n]) for n in a), min(a.count(), b.count()))


def union(masks: Sequence[Masks]) -> Masks:
    return reduce(lambda x, y: x | y, masks)


def shared_fraction(masks: Mapping[str, Masks], of: str, per_layer: bool = False):
    """Fraction of mask `of` also used by some other mask: |M_of & union(others)| / |M_of|."""
    mine = masks[of]
    others = union([m for label, m in masks.items() if label != of]) & mine
    if per_layer:
        return {n: _ratio(int(others[n].sum()), int(mine[n].sum())) for n in mine}
    return _ratio(others.count(), mine.count())


def exclusive(masks: Mapping[str, Masks], of: str) -> Masks:
    """The weights only mask `of` uses."""
    return masks[of] - union([m for label, m in masks.items() if label != of])


def stability(masks: Sequence[Masks]) -> dict[str, float]:
    """Mean and standard deviation of the IoU over all pairs (e.g. masks from different seeds)."""
    if len(masks) < 2:
        raise ValueError("stability needs at least two masks")
    scores = [iou(a, b) for a, b in itertools.combinations(masks, 2)]
    return {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores), "pairs": len(scores)}


def overlap_table(a: Masks, b: Masks, labels: tuple[str, str] = ("a", "b")) -> list[dict]:
    """One row per tensor and a final 'total' row: weights in each mask, IoU, IoMin and the
    fraction of each mask shared with the other."""
    la, lb = labels
    rows = []
    for name in a:
        x, y = a[name], b[name]
        inter = _inter(x, y)
        rows.append({"tensor": name, "size": x.numel(), f"count_{la}": int(x.sum()),
                     f"count_{lb}": int(y.sum()), "iou": _ratio(inter, _union(x, y)),
                     "iomin": _ratio(inter, _smaller(x, y)), f"shared_{la}": _ratio(inter, int(x.sum())),
                     f"shared_{lb}": _ratio(inter, int(y.sum()))})
    inter = sum(_inter(a[n], b[n]) for n in a)
    rows.append({"tensor": "total", "size": a.size(), f"count_{la}": a.count(), f"count_{lb}": b.count(),
                 "iou": iou(a, b), "iomin": iomin(a, b), f"shared_{la}": _ratio(inter, a.count()),
                 f"shared_{lb}": _ratio(inter, b.count())})
    return rows


def probability_histogram(probs: torch.Tensor, bins: int = 500) -> tuple[list[int], list[float]]:
    """Histogram of keep probabilities sigmoid(logits) on [0, 1]: (counts, bin edges)."""
    counts = torch.histc(probs.detach().float().flatten().cpu(), bins=bins, min=0.0, max=1.0)
    edges = torch.linspace(0.0, 1.0, bins + 1)
    return [int(c) for c in counts], edges.tolist()
