"""The experiments modmask ships, by name: the module that runs each and the module that reports
it; `write_report` rebuilds the report of any run or sweep directory with them."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ..reporting import read_summary
from ..reporting import sweep as sweep_report

EXPERIMENTS = {name: (f"modmask.experiments.{name}", f"modmask.reporting.{name}")
               for name in ("addmul", "doubleadd", "sharing", "permuted_mnist", "cifar", "scan", "dm_math")}


def _entry(name: str) -> tuple[str, str]:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def experiment_module(name: str) -> ModuleType:
    """The module with the experiment's Config, PRESETS, DESCRIPTION and run()."""
    return importlib.import_module(_entry(name)[0])


def report_module(name: str) -> ModuleType:
    """The module with the experiment's write_report(out, summary)."""
    return importlib.import_module(_entry(name)[1])


def write_report(out: str | Path) -> Path:
    """(Re)build report.md and figures/ of an experiment run directory from its results.json, or
    of a sweep directory (one holding sweep.json) from its points' results."""
    out = Path(out)
    if sweep_report.is_sweep(out):
        return sweep_report.write_report(out)
    path, summary = read_summary(out)
    name = summary.get("experiment")
    try:
        writer = report_module(name)
    except KeyError:
        raise ValueError(f"{path} is not the result of a known experiment ({name!r})") from None
    return writer.write_report(out, summary)
