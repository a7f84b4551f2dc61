"""Reports and figures built from finished run directories: reads results, never trains."""

from __future__ import annotations

from pathlib import Path

from ..runs import SWEEP_FILE, read_json
from ..runs.catalogue import report_module
from ..runs.legacy import upgrade


def write_report(out: str | Path) -> Path:
    """(Re)build report.md and figures/ of an experiment run directory from its results.json, or
    of a sweep directory (one holding sweep.json) from its points' results."""
    out = Path(out)
    if (out / SWEEP_FILE).exists():
        from . import sweep

        return sweep.write_report(out)
    path = out / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {out} a finished run directory? "
                                f"(`modmask run ... --out {out}` writes it)")
    summary = read_json(path)
    name = summary.get("experiment")
    try:
        writer = report_module(name)
    except KeyError:
        raise ValueError(f"{path} is not the result of a known experiment ({name!r})") from None
    # a run made before the mask settings were nested reports like a new one
    return writer.write_report(out, {**summary, "config": upgrade(summary["config"])})
