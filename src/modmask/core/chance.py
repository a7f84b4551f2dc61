"""Chance levels of overlap: what independent random masks of the same sizes would give (issue 18).

The reference ("null") model: in every tensor of n weights, mask a keeps k_a weights and mask b keeps
k_b, each set chosen uniformly at random and independently of the other. The intersection X of
one tensor is then hypergeometric,

    P(X = x) = C(k_a, x) C(n - k_a, k_b - x) / C(n, k_b),   mean k_a k_b / n,
    var = k_a k_b (n - k_a) (n - k_b) / (n^2 (n - 1)),

and the union is k_a + k_b - X, so every overlap score is a function of X. IoMin and shared
fractions are linear in X, so their expectations are exact from the mean; E[IoU] = E[X / (k_a + k_b - X)]
is a sum over the pmf, computed in log space (math.lgamma via torch.lgamma) over a window of the support
around the mean (WIDTH standard deviations plus SLACK values either side; the mass left out is far
below float precision), so a tensor of 10^8 weights costs a few thousand terms.

Pooled over tensors (the totals in `analysis`: sum of intersections over sum of unions), the total
intersection T is a sum of independent hypergeometrics: its mean and variance are the sums, and the
pooled IoU is T / (K_a + K_b - T). Its distribution is the convolution of the per-tensor pmfs, done
exactly while that is cheap (up to EXACT_WORK multiply-adds, e.g. small masks or few tensors, where a
normal approximation would be worst); beyond that, T is a sum of many large terms and a normal
distribution with the same mean and variance is accurate (central limit), so the expectation and
the p-value use it (continuity-corrected).

One-sided p-value: P(X >= observed) under the null. Per tensor it is exact (log space, resolved down
to about 1e-300); pooled it is exact to about 1e-16 when convolved, else normal. z is
(observed - mean) / std of the intersection.
"""

from __future__ import annotations

import math

import torch

WIDTH = 10.0  # standard deviations kept either side of the mean
SLACK = 30  # extra support values either side: small means have Poisson-like (heavier) tails
EXACT_WORK = 2e7  # largest convolution (multiply-adds) for the exact pooled distribution


def _log_choose(n: int, k: torch.Tensor) -> torch.Tensor:
    """[m] log C(n, k) for a float64 tensor k."""
    return math.lgamma(n + 1) - torch.lgamma(k + 1.0) - torch.lgamma(n - k + 1.0)


def moments(n: int, ka: int, kb: int) -> tuple[float, float]:
    """(mean, variance) of the hypergeometric intersection of random masks of ka and kb of n weights."""
    if n <= 1:
        return (ka * kb / n if n else 0.0), 0.0
    return ka * kb / n, ka * kb * (n - ka) * (n - kb) / (n * n * (n - 1))


def _support(n: int, ka: int, kb: int) -> tuple[int, int]:
    return max(0, ka + kb - n), min(ka, kb)


def log_pmf(n: int, ka: int, kb: int, x: torch.Tensor) -> torch.Tensor:
    """[m] log P(X = x) for integer values x (float64 tensor) inside the support."""
    x = x.to(torch.float64)
    normaliser = math.lgamma(n + 1) - math.lgamma(kb + 1) - math.lgamma(n - kb + 1)  # log C(n, kb)
    return _log_choose(ka, x) + _log_choose(n - ka, kb - x) - normaliser


def window(n: int, ka: int, kb: int) -> tuple[int, torch.Tensor]:
    """(lo, pmf [m] float64): the pmf on lo .. lo + m - 1, the support values around the mean that
    hold all but a negligible part of the mass, normalised to sum 1."""
    mean, var = moments(n, ka, kb)
    low, high = _support(n, ka, kb)
    spread = WIDTH * math.sqrt(var) + SLACK
    lo, hi = max(low, math.floor(mean - spread)), min(high, math.ceil(mean + spread))
    logp = log_pmf(n, ka, kb, torch.arange(lo, hi + 1, dtype=torch.float64))
    pmf = torch.exp(logp - logp.max())
    return lo, pmf / pmf.sum()


def upper_tail(n: int, ka: int, kb: int, observed: int) -> float:
    """P(X >= observed), exact in log space (terms beyond the mode fall at least geometrically)."""
    low, high = _support(n, ka, kb)
    if observed <= low:
        return 1.0
    if observed > high:
        return 0.0
    mean, var = moments(n, ka, kb)
    if observed <= mean:  # the lower side is short and safe to sum; the upper tail is 1 minus it
        below = torch.arange(max(low, math.floor(mean - WIDTH * math.sqrt(var) - SLACK)), observed,
                             dtype=torch.float64)
        return max(0.0, 1.0 - float(torch.logsumexp(log_pmf(n, ka, kb, below), 0).exp())) if len(below) else 1.0
    span = int(2 * WIDTH * math.sqrt(var)) + 2 * SLACK
    x = torch.arange(observed, min(high, observed + span) + 1, dtype=torch.float64)
    return min(1.0, float(torch.logsumexp(log_pmf(n, ka, kb, x), 0).exp()))


def _iou_of(t: torch.Tensor, ka: int, kb: int) -> torch.Tensor:
    union = ka + kb - t
    return torch.where(union > 0, t / union.clamp(min=1e-300), torch.zeros_like(t))


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _excess(observed: float, chance: float) -> float | None:
    """observed / chance; None when chance is 0 (no finite ratio, and JSON has no infinity)."""
    return observed / chance if chance > 0 else None


def _scores(size: int, ka: int, kb: int, inter: int, mean: float, var: float, iou_chance: float,
            p: float, method: str) -> dict:
    """The row of observed and chance scores for one tensor or for the pooled total."""
    std = math.sqrt(var)
    iou = _ratio(inter, ka + kb - inter)
    smaller = min(ka, kb)
    return {"size": size, "count_a": ka, "count_b": kb,
            "intersection": inter, "intersection_chance": mean, "intersection_std": std,
            "iou": iou, "iou_chance": iou_chance, "iou_ratio": _excess(iou, iou_chance),
            "iomin": _ratio(inter, smaller), "iomin_chance": _ratio(mean, smaller),
            "shared_a": _ratio(inter, ka), "shared_a_chance": _ratio(mean, ka),
            "shared_b": _ratio(inter, kb), "shared_b_chance": _ratio(mean, kb),
            "ratio": _excess(inter, mean), "z": (inter - mean) / std if std > 0 else 0.0,
            "p": p, "method": method}


def layer_chance(n: int, ka: int, kb: int, inter: int) -> dict:
    """Observed and chance scores of one tensor of n weights (see the module docstring)."""
    if not (0 <= ka <= n and 0 <= kb <= n and 0 <= inter <= min(ka, kb)):
        raise ValueError(f"impossible counts: {ka} and {kb} of {n} weights with intersection {inter}")
    mean, var = moments(n, ka, kb)
    lo, pmf = window(n, ka, kb)
    t = torch.arange(lo, lo + len(pmf), dtype=torch.float64)
    iou_chance = float((pmf * _iou_of(t, ka, kb)).sum())
    return _scores(n, ka, kb, inter, mean, var, iou_chance, upper_tail(n, ka, kb, inter), "exact")


def _convolve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Full discrete convolution of two float64 vectors."""
    if len(a) < len(b):
        a, b = b, a
    return torch.nn.functional.conv1d(a.view(1, 1, -1), b.flip(0).view(1, 1, -1),
                                      padding=len(b) - 1).view(-1)


def pooled_chance(layers: list[tuple[int, int, int, int]]) -> dict:
    """Observed and chance scores pooled over tensors, from (n, k_a, k_b, intersection) per tensor."""
    size = sum(n for n, *_ in layers)
    ka, kb, inter = (sum(layer[i] for layer in layers) for i in (1, 2, 3))
    mean = sum(moments(n, a, b)[0] for n, a, b, _ in layers)
    var = sum(moments(n, a, b)[1] for n, a, b, _ in layers)
    windows = [window(n, a, b) for n, a, b, _ in layers]
    work, length = 0.0, 1
    for _, pmf in windows:
        work += length * len(pmf)
        length += len(pmf) - 1
    if work <= EXACT_WORK:
        lo, pmf = 0, torch.ones(1, dtype=torch.float64)
        for layer_lo, layer_pmf in windows:
            lo, pmf = lo + layer_lo, _convolve(pmf, layer_pmf)
        t = torch.arange(lo, lo + len(pmf), dtype=torch.float64)
        p = 1.0 if inter <= lo else min(1.0, float(pmf[max(0, inter - lo):].sum()))
        return _scores(size, ka, kb, inter, mean, var, float((pmf * _iou_of(t, ka, kb)).sum()), p, "exact")
    # Normal approximation of T on a grid over mean +- WIDTH std (clipped to T's possible values).
    std = math.sqrt(var)
    low = sum(_support(n, a, b)[0] for n, a, b, _ in layers)
    high = sum(_support(n, a, b)[1] for n, a, b, _ in layers)
    t = torch.linspace(max(low, mean - WIDTH * std), min(high, mean + WIDTH * std), 4001, dtype=torch.float64)
    weights = torch.exp(-0.5 * ((t - mean) / std) ** 2)
    iou_chance = float((weights * _iou_of(t, ka, kb)).sum() / weights.sum())
    p = 0.5 * math.erfc((inter - 0.5 - mean) / (std * math.sqrt(2)))
    return _scores(size, ka, kb, inter, mean, var, iou_chance, min(1.0, p), "normal")
