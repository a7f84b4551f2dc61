"""One run directory per seed (`seed-<i>/`), and the aggregate over seeds that a run's
results.json holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.stats import summarize


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def seed_finished(out: str | Path, seed: int) -> bool:
    return (seed_dir(out, seed) / "results.json").exists()


def aggregate(values: list[Any]) -> Any:
    """Over seeds, leaf by leaf: numbers -> {"mean", "std", "n"} (the sample std; None for one
    seed, so no "± 0" is shown); dicts and lists of one length recurse; lists whose lengths differ
    between seeds are kept per seed; anything else (names) is taken from the first seed."""
    if not values:
        raise ValueError("nothing to aggregate: no seed has results")
    first = values[0]
    if isinstance(first, bool) or first is None:
        return first
    if isinstance(first, (int, float)):
        numbers = [float(v) for v in values if v is not None]
        if not numbers:
            return None
        return summarize(numbers)
    if isinstance(first, dict):
        return {k: aggregate([v.get(k) for v in values]) for k in first}
    if isinstance(first, list):
        if any(not isinstance(v, list) or len(v) != len(first) for v in values):
            return values  # lists that differ between seeds (e.g. a diagnosis's messages): each seed's, as they are
        return [aggregate([v[i] for v in values]) for i in range(len(first))]
    return first
