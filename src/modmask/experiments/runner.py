"""Running an experiment: resolve the config, run each seed in its own run directory (resuming
what is there), and aggregate the seeds' results (mean and standard deviation)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import registry
from .config import resolve, to_json
from .rundir import RunDir, read_json, write_json


def aggregate(values: list[Any]) -> Any:
    """Mean/std over seeds, leaf by leaf: numbers -> {"mean", "std"}; dicts and lists recurse;
    anything else (names) is taken from the first seed."""
    first = values[0]
    if isinstance(first, bool) or first is None:
        return first
    if isinstance(first, (int, float)):
        numbers = [float(v) for v in values if v is not None]
        if not numbers:
            return None
        return {"mean": statistics.fmean(numbers), "std": statistics.pstdev(numbers) if len(numbers) > 1 else 0.0}
    if isinstance(first, dict):
        return {k: aggregate([v.get(k) for v in values]) for k in first}
    if isinstance(first, list):
        return [aggregate([v[i] for v in values]) for i in range(len(first))]
    return first


def run_experiment(name: str, preset: str, overrides: dict, out: str | Path, seeds: int = 1,
                   progress: bool = True) -> dict:
    """Run (or resume) `seeds` seeds of an experiment into out/seed-<i>; write out/results.json."""
    module = registry.get(name)
    config = resolve(module.Config, module.PRESETS, preset, overrides)
    described = {"experiment": name, "preset": preset, **to_json(config)}
    top = RunDir(out)
    top.check_config(described)
    per_seed = []
    for seed in range(seeds):
        run = RunDir(top.path / f"seed-{seed}")
        run.check_config(described)
        results_path = run.path / "results.json"
        if results_path.exists():
            per_seed.append(read_json(results_path))
            continue
        results = module.run(config, run, seed, progress)
        write_json(results_path, results)
        per_seed.append(read_json(results_path))
    summary = {"experiment": name, "preset": preset, "config": described, "seeds": seeds,
               "aggregate": aggregate(per_seed), "per_seed": per_seed}
    write_json(top.path / "results.json", summary)
    return summary
