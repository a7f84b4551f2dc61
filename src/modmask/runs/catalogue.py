"""The experiments modmask ships, by name: the module that runs each and the module that reports
it. Named as strings, so that the experiments and the reporting layer can both look an entry up
without importing each other."""

from __future__ import annotations

import importlib
from types import ModuleType

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
