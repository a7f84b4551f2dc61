"""Markdown tables and number formatting for reports, over single values or {"mean", "std"}."""

from __future__ import annotations

from typing import Any, Sequence


def mean(value: Any) -> float | None:
    return value["mean"] if isinstance(value, dict) else value


def std(value: Any) -> float:
    """The spread over seeds (0 for one seed or a single value)."""
    return (value.get("std") or 0.0) if isinstance(value, dict) else 0.0


def fmt(value: Any, digits: int = 1, percent: bool = False) -> str:
    """'12.3' or '12.3 ± 0.4' (a value aggregated over seeds)."""
    if value is None:
        return "n/a"
    scale = 100 if percent else 1
    if isinstance(value, dict):
        m = value["mean"] * scale
        return f"{m:.{digits}f} ± {value['std'] * scale:.{digits}f}" if value.get("std") else f"{m:.{digits}f}"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def timings_table(timings: dict) -> str:
    """Phase -> seconds (mean ± std over seeds when aggregated)."""
    rows = [(phase, fmt(value, 1)) for phase, value in timings.items()]
    total = sum(mean(v) or 0 for v in timings.values())
    return table(["phase", "seconds"], rows + [("total", f"{total:.1f}")])


def run_line(summary: dict) -> str:
    """'Preset `small`, 3 seeds (mean ± std over n=3)'; one seed shows its values as they are."""
    n = summary["seeds"]
    return f"Preset `{summary['preset']}`, " + ("1 seed" if n == 1 else f"{n} seeds (mean ± std over n={n})")


def timings_section(timings: dict, title: str = "Timings (seconds per seed)") -> list[str]:
    return [f"## {title}", "", timings_table(timings), ""]
