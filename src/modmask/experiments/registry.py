"""The experiments the command line knows, by name."""

from __future__ import annotations

import importlib

EXPERIMENTS = {
    "addmul": "modmask.experiments.addmul",
    "doubleadd": "modmask.experiments.doubleadd",
    "sharing": "modmask.experiments.sharing",
    "permuted_mnist": "modmask.experiments.permuted_mnist",
    "cifar": "modmask.experiments.cifar",
    "scan": "modmask.experiments.scan",
    "dm_math": "modmask.experiments.dm_math",
}


def get(name: str):
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
