"""Numbers over seeds, honestly: mean, spread and n, and text that never shows "± 0.0" for one seed.

The spread is the sample standard deviation (n - 1 in the denominator), the usual estimate of the
seed-to-seed spread; with one seed it does not exist, so it is None and the text shows "x (n=1)".
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence


def summarize(values: Sequence[float]) -> dict:
    """{"mean", "std", "n"} of per-seed numbers; std is the sample std, None for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value (one per seed), got none")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"summarize got NaN among {values}: drop or fix the failed seed first")
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def mean_std_text(values: Sequence[float] | Mapping, digits: int = 1) -> str:
    """"97.3 (n=1)" for one seed, "97.3 ± 0.4 (n=3)" for several; takes the per-seed values or a
    `summarize` result."""
    summary = values if isinstance(values, Mapping) else summarize(values)
    mean, std, n = summary["mean"], summary["std"], summary["n"]
    if n == 1 or std is None:
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
