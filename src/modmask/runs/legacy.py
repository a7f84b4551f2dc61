"""Config keys of run directories made before the mask settings were nested in a `mask` group
(modmask 0.1), or before how a step runs moved from `mask` to its own `execution` group, still read
from old config.json / results.json files and still accepted on the command line: old key -> dotted key."""

from __future__ import annotations

from ..config import nest

from ..core.mask_config import EXECUTION_SETTINGS

MASK_KEYS = {"beta": "mask.beta", "mask_lr": "mask.lr", "mask_steps": "mask.steps", "k": "mask.k",
             "compiled": "execution.compiled", "original_clipping": "mask.original_clipping",
             **{f"mask.{name}": f"execution.{name}" for name in EXECUTION_SETTINGS}}
# where an experiment's flat key meant a mask setting that other experiments name otherwise
EXPERIMENT_KEYS = {"permuted_mnist": {"steps": "mask.steps", "lr": "mask.lr", "grad_clip": "mask.grad_clip"}}


def legacy_keys(experiment: str | None) -> dict[str, str]:
    return {**MASK_KEYS, **EXPERIMENT_KEYS.get(experiment, {})}


def upgrade(config: dict) -> dict:
    """A stored config (as in config.json, with its "experiment" key) in today's nested form; a
    config already nested is returned as it is."""
    keys = legacy_keys(config.get("experiment"))
    flat = {keys.get(k, k): v for k, v in config.items() if not isinstance(v, dict)}
    groups = {k: v for k, v in config.items() if isinstance(v, dict)}
    nested = nest(flat)
    for name, values in groups.items():
        nested[name] = {**values, **nested.get(name, {})}
    moved = {n: nested["mask"].pop(n) for n in EXECUTION_SETTINGS if n in nested.get("mask", {})}
    if moved:
        nested["execution"] = {**moved, **nested.get("execution", {})}
    return nested
