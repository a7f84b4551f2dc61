"""Faithfulness over density: how much of a function the top-d weights of a ranking carry, at a
ladder of densities d, for a trained mask's logits beside pruning baselines and random removal
(docs/controls.md, "Curves over density").

A single inverse mask is one point: on small, brittle networks removing as many random weights
already destroys the function, so the point cannot tell a mask from its size. Read as a ranking
(the top fraction d of the logits), the same mask is compared with any other ranking at every
size. At each density d of the ladder, in the tensors the curve selects (`subset`; the others
keep the `rest` mask, e.g. the Full mask, or their full weights):

- sufficiency: the metric with only the top-d weights of the subset kept;
- necessity: the metric with those weights removed (the subset's other weights kept);
- full / empty: the metric with every / no weight of the subset kept.

Each curve is summarised by its area, normalised between the full model and the empty one and
averaged over log10(d) (trapezoids): sufficiency_area = mean of (m - empty) / (full - empty),
necessity_area = mean of (full - m) / (full - empty). 1 means "the function from the smallest
density on" (sufficiency) or "the function gone at the smallest density" (necessity); 0 means the
ranking does no better than keeping nothing, or than removing nothing. Random removal comes two
ways: "random" draws d of all subset weights (pooled, so large tensors hold most of them) and
"random per tensor" d of every tensor.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .baselines import BASELINES, importance
from .evaluation import evaluate
from .masks import Masks, check_fits, check_same_tensors, top_masks_ladder
from .removal import REMOVALS, mean_inputs, removal_modes
from .selection import per_tensor
from .stats import summarize
from .units import Units

DENSITIES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
RANDOM, RANDOM_PER_TENSOR = "random", "random per tensor"  # the methods of the "random" baseline
# every method a baseline gives (the others of a curve are masks: logit rankings, masks trained per density)
BASELINE_METHODS = (*(b for b in BASELINES if b != RANDOM), RANDOM, RANDOM_PER_TENSOR)


@dataclass(frozen=True)
class CurveConfig:
    """What curves over density measure (the core uses densities, baselines, random_draws and
    subset; enabled, train and examples are for the studies).

    densities: the ladder, strictly increasing fractions in (0, 1), at least two. baselines: of
    BASELINES ("random" gives the methods "random" and "random per tensor"). random_draws: random
    rankings per random method, averaged (each density's spread kept). subset: None (every masked
    tensor) or names / glob patterns of the tensors the curve selects in; the others keep the rest
    mask. enabled: a study computes curves at all. train: a study also trains one mask per density
    (MaskConfig.target_density), together in one pass. examples: a built-in study evaluates each
    function's curves on at most this many of its evaluation examples (0: all of them), since a
    curve evaluates the model 2 x densities times per method. functions: None (every function of the
    study) or names / glob patterns of the functions that get curves (e.g. "cat*" in cifar).
    removal: how every point removes the weights it does not keep, 'zero' (the paper's) or 'mean'
    (or rules per tensor; core/removal.py), the means read once on each function's evaluation batches.
    """

    densities: tuple[float, ...] = DENSITIES
    baselines: tuple[str, ...] = BASELINES
    random_draws: int = 3
    subset: tuple[str, ...] | None = None
    enabled: bool = True
    train: bool = False
    examples: int = 0
    functions: tuple[str, ...] | None = None
    removal: str = "zero"

    def __post_init__(self):
        per_tensor(self.removal, [], REMOVALS, "curves.removal")  # an unknown mode fails here, before any work
        # config.json and Python callers give lists (or one pattern as a string): stored as tuples
        as_tuple = lambda v: (v,) if isinstance(v, str) else tuple(v)  # noqa: E731
        object.__setattr__(self, "densities", tuple(float(d) for d in as_tuple(self.densities)))
        object.__setattr__(self, "baselines", as_tuple(self.baselines))
        for name in ("subset", "functions"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, as_tuple(getattr(self, name)))
        d = self.densities
        problems = [message for message, bad in {
            f"densities must be at least two fractions in (0, 1), strictly increasing (got {list(d)}); e.g. "
            f"{','.join(str(x) for x in DENSITIES)}":
                len(d) < 2 or not all(0 < x < 1 for x in d) or any(a >= b for a, b in zip(d, d[1:])),
            f"unknown baseline(s) {[b for b in self.baselines if b not in BASELINES]}; baselines: "
            f"{', '.join(BASELINES)}": any(b not in BASELINES for b in self.baselines),
            f"random_draws must be at least 1 (got {self.random_draws})": self.random_draws < 1,
            "subset must name at least one tensor or pattern, or be None for every masked tensor":
                self.subset is not None and not self.subset,
            f"examples must be 0 (all evaluation examples) or a positive count (got {self.examples})":
                self.examples < 0,
            "functions must name at least one function or pattern, or be None for every function":
                self.functions is not None and not self.functions,
        }.items() if bad]
        if problems:
            raise ValueError("curve settings: " + "; ".join(problems))


def subset_names(names: Sequence[str], subset: Sequence[str] | None) -> list[str]:
    """The masked tensors (of `names`, in their order) that `subset` (names or glob patterns)
    selects; None selects all. A pattern that matches none of them is an error naming them."""
    if subset is None:
        return list(names)
    unmatched = [p for p in subset if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"the curve's subset {list(subset)}: {unmatched} match(es) none of the masked tensors "
                         f"{list(names)}; name some of these, or give glob patterns such as 'net.layers.1.*'")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in subset)]


def baseline_rankings(model: nn.Module, names: Sequence[str], config: CurveConfig, batches: Iterable | None = None,
                      loss_fn: Callable | None = None, *, seed: int = 0, mode: str = "eval",
                      units: Sequence[Units] = ()) -> dict[str, dict]:
    """method -> (name -> [*shape] importance scores) of every baseline in config.baselines but
    "random", which density_curves draws itself. batches, loss_fn: train-like data and the loss,
    for the baselines that need them (taylor, wanda). units: a unit mask's unit sets, which the
    baselines then rank as units (baselines.importance)."""
    return {method: importance(model, method, list(names), batches, loss_fn, seed=seed, mode=mode, units=units)
            for method in config.baselines if method != RANDOM}


def normalised_area(densities: Sequence[float], values: Sequence[float], full: float, empty: float,
                    side: str) -> float | None:
    """The mean over log10(density) (trapezoids, divided by the axis' length) of a curve
    normalised between the full and the empty model: (m - empty) / (full - empty) for
    "sufficiency", (full - m) / (full - empty) for "necessity". None where full == empty."""
    if side not in ("sufficiency", "necessity"):
        raise ValueError(f"side must be 'sufficiency' or 'necessity', not {side!r}")
    if _undefined(full, empty):
        return None
    scaled = [((m - empty) if side == "sufficiency" else (full - m)) / (full - empty) for m in values]
    x = [math.log10(d) for d in densities]
    area = sum((scaled[i] + scaled[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(len(x) - 1))
    return area / (x[-1] - x[0])


def density_curves(model: nn.Module, rankings: Mapping[str, Mapping[str, torch.Tensor]], batches: Iterable,
                   metric: Callable, config: CurveConfig = CurveConfig(), *, rest: Masks | None = None,
                   trained: Mapping[str, Mapping[float, Masks]] | None = None,
                   names: Sequence[str] | None = None, seed: int = 0, mode: str = "eval",
                   units: Sequence[Units] = ()) -> dict[str, Any]:
    """Sufficiency and necessity of each ranking at every density of config.densities, for one
    function (its evaluation `batches`, re-iterable, and `metric(outputs, targets)` -> [B]).

    rankings: method -> scores (name -> [*shape], higher = more important), e.g. {"mask add":
    trained.logits, "magnitude": ...}; all over the same tensors (the masked ones). The top-d
    weights are pooled over the subset's tensors (top_masks). trained: method -> {density: Masks},
    masks trained to each density, read as they are. With "random" in config.baselines, the
    methods "random" (pooled) and "random per tensor" average config.random_draws rankings of
    uniform scores (draw r from seed + r), with each density's sample std. rest: the masks of the
    tensors outside config.subset (it must cover them all; None: their full weights). names: the
    masked tensors (default: the rankings' or trained masks'; needed where there are neither).
    units: the unit sets of unit masks being ranked (TrainedMask.units): the random baselines then
    draw units (one score per unit, on all its weights), as baselines.importance does.

    Returns plain JSON: {"densities": [...], "subset": [names], "full": x, "empty": y,
    "methods": {method: {"sufficiency": [...], "necessity": [...], ("sufficiency_std",
    "necessity_std": [...] for random with 2+ draws; "kept": [...] for trained masks, the fraction
    of the subset's weights each keeps), "sufficiency_area": a, "necessity_area": b}},
    "random_draws": n (with random), "removal": config.removal, "note": text (only where full == empty:
    areas None)}. Under mean removal the means are read once on `batches`, for every point.
    Every input is checked before the first evaluation.
    """
    rankings, trained = dict(rankings), dict(trained or {})
    densities = list(config.densities)
    if iter(batches) is batches:
        raise ValueError("density_curves evaluates the batches many times: pass a list or a DataLoader, "
                         "not an iterator or generator")
    covered = [*rankings.values(), *(m for by_density in trained.values() for m in by_density.values())]
    if names is None and not covered:
        raise ValueError("density_curves needs the masked tensors: give rankings, trained masks or names")
    params = dict(model.named_parameters())
    unknown = [n for n in (names or []) if n not in params]
    if unknown:
        raise ValueError(f"names {unknown} are not parameters of the model ({type(model).__name__}); name the "
                         f"masked tensors, e.g. list(trained.logits)")
    reference = {n: params[n] for n in (names if names is not None else covered[0])}
    names = list(reference)
    for method, scores in rankings.items():
        check_fits(scores, model, source=f"ranking {method!r}")
        check_same_tensors(reference, scores, "the masked tensors", f"ranking {method!r}")
    for method, by_density in trained.items():
        missing = [d for d in densities if d not in by_density]
        if missing:
            raise ValueError(f"trained masks {method!r} have none at density {missing} (they have "
                             f"{sorted(by_density)}); train one per density of the ladder or leave them out")
        for d in densities:
            check_fits(by_density[d], model, source=f"trained {method!r} at {d}")
            check_same_tensors(reference, by_density[d], "the masked tensors", f"trained {method!r} at {d}")
    subset = subset_names(names, config.subset)
    outside = [n for n in names if n not in set(subset)]
    if rest is not None:
        lacking = [n for n in outside if n not in rest]
        if lacking:
            raise ValueError(f"the rest mask has no mask for {lacking}, outside the curve's subset: pass one "
                             f"that covers every masked tensor (e.g. the Full mask), or rest=None for full weights")
        check_fits(rest, model, source="the rest mask")
    kept_outside = {n: rest[n] for n in outside} if rest is not None else {}
    means = [n for n, m in removal_modes(config.removal, names).items() if m == "mean"]
    read = mean_inputs(model, batches, means, mode=mode) if means else None  # the means, read once for every point

    def measured(kept: Masks | None) -> float:
        """The metric with the subset's weights as `kept` keeps them (None: all of them)."""
        return evaluate(model, {**kept_outside, **(kept or {})}, batches, metric, mode, config.removal, read)

    def curve(ladder: list[Masks]) -> dict[str, list[float]]:
        return {"sufficiency": [measured(top) for top in ladder],
                "necessity": [measured(~top) for top in ladder]}

    def restricted(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: scores[n] for n in subset}

    full = measured(None)
    empty = measured(Masks({n: torch.zeros(reference[n].shape, dtype=torch.bool) for n in subset}))
    methods = {method: curve(top_masks_ladder(restricted(scores), densities)) for method, scores in rankings.items()}
    for method, by_density in trained.items():
        ladder = [Masks(restricted(by_density[d])) for d in densities]
        # a mask trained to a density may end below it (a function that needs fewer weights): say where it is
        methods[method] = {**curve(ladder), "kept": [m.density() for m in ladder]}
    if RANDOM in config.baselines:
        # unit draws need all of a unit set's tensors; weight draws stay over the subset, as before units
        draws = [restricted(importance(model, RANDOM, names if units else subset, seed=seed + r, units=units))
                 for r in range(config.random_draws)]
        for method, by_tensor in ((RANDOM, False), (RANDOM_PER_TENSOR, True)):
            curves = [curve(top_masks_ladder(scores, densities, by_tensor)) for scores in draws]
            methods[method] = _mean_curve(curves)
    for values in methods.values():
        for side in ("sufficiency", "necessity"):
            values[f"{side}_area"] = normalised_area(densities, values[side], full, empty, side)
    result = {"densities": densities, "subset": subset, "full": full, "empty": empty, "methods": methods,
              "removal": config.removal}
    if RANDOM in config.baselines:
        result["random_draws"] = config.random_draws
    if _undefined(full, empty):
        result["note"] = (f"the metric is {full:.4g} with every weight of the subset kept and with none: the "
                          f"function does not depend on these weights (or is not computed at all), so the "
                          f"normalised areas are undefined (None)")
    return result


def _undefined(full: float, empty: float) -> bool:
    """Whether the normalisation between the full and the empty model is undefined (they are equal)."""
    return math.isclose(full, empty, rel_tol=0.0, abs_tol=1e-12)


def _mean_curve(curves: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The mean of several draws' curves, density by density, with the sample std for 2+ draws."""
    mean = {}
    for side in ("sufficiency", "necessity"):
        summaries = [summarize(values) for values in zip(*(c[side] for c in curves))]
        mean[side] = [s["mean"] for s in summaries]
        if len(curves) > 1:
            mean[f"{side}_std"] = [s["std"] for s in summaries]
    return mean
