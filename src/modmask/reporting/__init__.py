"""Reports and figures built from finished run directories: reads results, never trains."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..experiments.rundir import read_json

REPORTS = {"addmul": "modmask.reporting.addmul", "doubleadd": "modmask.reporting.doubleadd",
           "sharing": "modmask.reporting.sharing", "permuted_mnist": "modmask.reporting.permuted_mnist",
           "cifar": "modmask.reporting.cifar", "scan": "modmask.reporting.scan",
           "dm_math": "modmask.reporting.dm_math"}


def write_report(out: str | Path) -> Path:
    """(Re)build report.md and figures/ of an experiment run directory from its results.json, or
    of a sweep directory (one holding sweep.json) from its points' results."""
    out = Path(out)
    if (out / "sweep.json").exists():
        from . import sweep

        return sweep.write_report(out)
    path = out / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {out} a finished run directory? "
                                f"(`modmask run ... --out {out}` writes it)")
    summary = read_json(path)
    name = summary.get("experiment")
    if name not in REPORTS:
        raise ValueError(f"{path} is not the result of a known experiment ({name!r})")
    return importlib.import_module(REPORTS[name]).write_report(out, summary)
