"""Comparing masks: overlap, sharing, exclusive weights, stability, probabilities (paper §2.1, §2.6).

Free functions over `Masks`. Totals pool all tensors (sum of intersections over sum of unions,
...). A ratio with an empty denominator is reported as 0.0. Chance levels (what independent random
masks with the same per-tensor counts give) come from `chance.py`; see docs/controls.md.
"""

from __future__ import annotations

import itertools
import statistics
from functools import reduce
from typing import Mapping, Sequence

import torch

from .chance import layer_chance, pooled_chance
from .masks import Masks, check_same_tensors


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _per_layer(a: Masks, b: Masks, score) -> dict[str, float]:
    check_same_tensors(a, b, "masks a", "b")  # also shapes: bool ops would broadcast silently
    return {n: score(a[n], b[n]) for n in a}


def _pooled(a: Masks, b: Masks, num, den) -> float:
    check_same_tensors(a, b, "masks a", "b")
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
    check_same_tensors(a, b, "masks a", "b")
    return _ratio(sum(_inter(a[n], b[n]) for n in a), min(a.count(), b.count()))


def union(masks: Sequence[Masks]) -> Masks:
    """The weights any of the masks keeps (masks of the same tensors and shapes)."""
    if not masks:
        raise ValueError("the union of no masks is undefined: pass at least one mask")
    return reduce(lambda x, y: x | y, masks)


def _one_of(masks: Mapping[str, Masks], of: str) -> Masks:
    """masks[of], after checking that all masks cover the same tensors in the same shapes."""
    if of not in masks:
        raise ValueError(f"no mask labelled {of!r}; the masks are {list(masks)}: pass one of these labels")
    if len(masks) < 2:
        raise ValueError(f"mask {of!r} has no other mask to share weights with: pass at least two masks")
    check_comparable(masks)
    return masks[of]


def shared_fraction(masks: Mapping[str, Masks], of: str, per_layer: bool = False):
    """Fraction of mask `of` also used by some other mask: |M_of & union(others)| / |M_of|."""
    mine = _one_of(masks, of)
    others = union([m for label, m in masks.items() if label != of]) & mine
    if per_layer:
        return {n: _ratio(int(others[n].sum()), int(mine[n].sum())) for n in mine}
    return _ratio(others.count(), mine.count())


def exclusive(masks: Mapping[str, Masks], of: str) -> Masks:
    """The weights only mask `of` uses."""
    return _one_of(masks, of) - union([m for label, m in masks.items() if label != of])


def stability(masks: Sequence[Masks]) -> dict[str, float]:
    """Mean and standard deviation of the IoU over all pairs (e.g. masks from different seeds), and
    `chance`: the mean over the pairs of the IoU that independent random masks with the same
    per-tensor counts give (pooled, as the IoU)."""
    if len(masks) < 2:
        raise ValueError("stability needs at least two masks")
    scores = [iou(a, b) for a, b in itertools.combinations(masks, 2)]
    chance = [overlap_chance(a, b)["total"]["iou_chance"] for a, b in itertools.combinations(masks, 2)]
    return {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores), "pairs": len(scores),
            "chance": statistics.fmean(chance)}


def overlap_table(a: Masks, b: Masks, labels: tuple[str, str] = ("a", "b"), chance: bool = False) -> list[dict]:
    """One row per tensor and a final 'total' row: weights in each mask, IoU, IoMin and the
    fraction of each mask shared with the other. With `chance`, each row also has the chance
    level of every score (`iou_chance`, `iomin_chance`, `shared_<label>_chance`), `iou_ratio`
    (observed / chance IoU), the observed and chance `intersection`, and `z` and `p` of the
    intersection (see `overlap_chance`)."""
    la, lb = labels
    check_same_tensors(a, b, f"masks {la!r}", f"{lb!r}")
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
    if chance:
        levels = overlap_chance(a, b, labels)
        for row in rows:
            level = levels["total"] if row["tensor"] == "total" else levels["per_layer"][row["tensor"]]
            row.update({"iou_chance": level["iou_chance"], "iou_ratio": level["iou_ratio"],
                        "iomin_chance": level["iomin_chance"], f"shared_{la}_chance": level["shared_a_chance"],
                        f"shared_{lb}_chance": level["shared_b_chance"], "intersection": level["intersection"],
                        "intersection_chance": level["intersection_chance"], "z": level["z"], "p": level["p"]})
    return rows


def check_comparable(masks: Mapping[str, Masks]) -> None:
    """Raise ValueError unless all masks (label -> Masks) cover the same tensors with the same
    shapes, naming the two masks and the tensor that differ (masks of different models)."""
    if not masks:
        raise ValueError("no masks to compare: pass a mapping label -> Masks")
    (first, reference), *others = masks.items()
    for label, other in others:
        check_same_tensors(reference, other, f"masks {first!r}", f"{label!r}")


def overlap_chance(a: Masks, b: Masks, labels: tuple[str, str] = ("a", "b")) -> dict:
    """Observed overlap of two masks next to its chance level: what independent, uniformly random
    masks with the same number of weights in every tensor give (see chance.py, docs/controls.md).

    Returns {"per_layer": {tensor: row}, "total": row}; a row has size, count_a, count_b,
    intersection (observed), intersection_chance and intersection_std (mean and std under chance),
    iou / iou_chance / iou_ratio, iomin / iomin_chance, shared_a / shared_a_chance (fraction of a
    also in b) and the same for b, ratio (observed / chance intersection, which is also the ratio of
    the IoMin and of the shared fractions; None when chance is 0), z (standard scores of the
    intersection above chance), p (one-sided: the probability under chance of an intersection at
    least as large) and method ('exact', or 'normal' for a large pooled total). Per tensor
    everything is exact; the total pools the tensors as `iou`/`iomin` do. `labels` name the masks in errors.
    """
    check_comparable(dict(zip(labels, (a, b))))
    counts = [(a[n].numel(), int(a[n].sum()), int(b[n].sum()), _inter(a[n], b[n])) for n in a]
    return {"per_layer": {n: layer_chance(*c) for n, c in zip(a, counts)}, "total": pooled_chance(counts)}


def shared_fraction_chance(masks: Mapping[str, Masks], of: str, per_layer: bool = False):
    """Chance level of `shared_fraction`: with every mask replaced by an independent random mask of
    the same per-tensor counts, a weight of tensor t is in some other mask with probability
    1 - prod_j (1 - k_j / n_t), which is the expected shared fraction of t (exact); pooled over
    tensors it is weighted by the counts of mask `of`."""
    mine = _one_of(masks, of)
    levels = {}
    for name, m in mine.items():
        missed = 1.0
        for label, other in masks.items():
            if label != of:
                missed *= 1 - int(other[name].sum()) / max(m.numel(), 1)
        levels[name] = 1 - missed
    if per_layer:
        return levels
    return _ratio(sum(int(m.sum()) * levels[n] for n, m in mine.items()), mine.count())


def overlap_matrix(masks: Mapping[str, Masks], per_layer: bool = False) -> dict:
    """IoU and IoMin of every pair of masks (label -> Masks, any number >= 2) with chance levels.

    Returns {"labels": [L], "iou", "iou_chance", "iomin", "iomin_chance", "z", "p": [L][L] nested
    lists (pooled totals; row i, column j compares labels[i] with labels[j]; the diagonal compares a
    mask with itself, its chance being two random masks of that size), "pairs": one row per pair
    i < j (a, b, iou, iou_chance, iou_ratio, iomin, iomin_chance, z, p, method)} and, with
    `per_layer`, "per_layer": {tensor: {"iou", "iou_chance", "iomin", "iomin_chance": [L][L]}}.
    """
    if len(masks) < 2:
        raise ValueError(f"an overlap matrix needs at least two masks, got {list(masks)}")
    check_comparable(masks)
    labels = list(masks)
    size = len(labels)
    levels = {}
    for i, j in itertools.combinations_with_replacement(range(size), 2):
        levels[i, j] = levels[j, i] = overlap_chance(masks[labels[i]], masks[labels[j]], (labels[i], labels[j]))
    keys = ("iou", "iou_chance", "iomin", "iomin_chance")

    def grid(key, part=lambda level: level["total"]):
        return [[part(levels[i, j])[key] for j in range(size)] for i in range(size)]

    result = {"labels": labels, **{key: grid(key) for key in (*keys, "z", "p")}}
    result["pairs"] = [{"a": labels[i], "b": labels[j],
                        **{k: levels[i, j]["total"][k] for k in (*keys, "iou_ratio", "z", "p", "method")}}
                       for i, j in itertools.combinations(range(size), 2)]
    if per_layer:
        result["per_layer"] = {name: {key: grid(key, lambda level: level["per_layer"][name]) for key in keys}
                               for name in masks[labels[0]]}
    return result


def probability_histogram(probs: torch.Tensor, bins: int = 500) -> tuple[list[int], list[float]]:
    """Histogram of keep probabilities sigmoid(logits) on [0, 1]: (counts, bin edges)."""
    counts = torch.histc(probs.detach().float().flatten().cpu(), bins=bins, min=0.0, max=1.0)
    edges = torch.linspace(0.0, 1.0, bins + 1)
    return [int(c) for c in counts], edges.tolist()
