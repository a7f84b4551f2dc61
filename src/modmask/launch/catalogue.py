"""The experiments modmask ships, by name: the module that runs each (Config, PRESETS,
DESCRIPTION, run) and the module that reports it (write_report(out, summary)). A plain registry
in the layer above both, so that neither the experiments nor the reporting layer imports the
other; `write_report` rebuilds the report of any run or sweep directory from it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..experiments import addmul, cifar, dm_math, doubleadd, permuted_mnist, scan, sharing
from ..reporting import addmul as addmul_report
from ..reporting import cifar as cifar_report
from ..reporting import dm_math as dm_math_report
from ..reporting import doubleadd as doubleadd_report
from ..reporting import permuted_mnist as permuted_mnist_report
from ..reporting import read_summary
from ..reporting import scan as scan_report
from ..reporting import sharing as sharing_report
from ..reporting import sweep as sweep_report
from ..reporting.training import training_section
from ..runs import write_text

# name -> (experiment module, report module), in the order `modmask list` shows them
EXPERIMENTS: dict[str, tuple[ModuleType, ModuleType]] = {
    "addmul": (addmul, addmul_report),
    "doubleadd": (doubleadd, doubleadd_report),
    "sharing": (sharing, sharing_report),
    "permuted_mnist": (permuted_mnist, permuted_mnist_report),
    "cifar": (cifar, cifar_report),
    "scan": (scan, scan_report),
    "dm_math": (dm_math, dm_math_report),
}


def _entry(name: str) -> tuple[ModuleType, ModuleType]:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def experiment_module(name: str) -> ModuleType:
    """The module with the experiment's Config, PRESETS, DESCRIPTION and run()."""
    return _entry(name)[0]


def report_module(name: str) -> ModuleType:
    """The module with the experiment's write_report(out, summary)."""
    return _entry(name)[1]


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
    report = writer.write_report(out, summary)
    section = training_section(summary)  # the same for every study, so added here, once
    if section:
        write_text(report, report.read_text() + "\n" + "\n".join(section))
    return report
