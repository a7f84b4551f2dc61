"""Running an experiment: resolve the config, run each seed in its own run directory (resuming
what is there), and aggregate the seeds' results (mean and standard deviation).

`run_seed` runs one seed and `collect` aggregates finished seeds, so a sweep can run the seeds of
one run directory as separate tasks (experiments/sweep.py); `run_experiment` is both in a row.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from ..tracking import open_trackers
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


def describe(name: str, preset: str, overrides: dict) -> dict:
    """The resolved config as stored in config.json (raises ConfigError for a bad preset or key)."""
    module = registry.get(name)
    return {"experiment": name, "preset": preset, **to_json(resolve(module.Config, module.PRESETS, preset, overrides))}


def defaults(name: str) -> dict:
    """Every config key at its default value (no preset, no override)."""
    return to_json(registry.get(name).Config())


def prepare(name: str, preset: str, overrides: dict, out: str | Path) -> dict:
    """Check (or write) out/config.json; refuses a directory that holds a run with other settings."""
    described = describe(name, preset, overrides)
    RunDir(out).check_config(described, defaults(name))
    return described


def seed_finished(out: str | Path, seed: int) -> bool:
    return (Path(out) / f"seed-{seed}" / "results.json").exists()


def run_seed(name: str, preset: str, overrides: dict, out: str | Path, seed: int, progress: bool = True,
             track: Sequence[str] = ()) -> dict:
    """Run (or resume) one seed into out/seed-<seed> and return its results; a finished seed is
    only read. `track`: tracker names (modmask.tracking) that also receive the metrics."""
    module = registry.get(name)
    config = resolve(module.Config, module.PRESETS, preset, overrides)
    described = prepare(name, preset, overrides, out)
    run = RunDir(Path(out) / f"seed-{seed}")
    run.check_config(described, defaults(name))
    results_path = run.path / "results.json"
    if results_path.exists():
        return read_json(results_path)
    with open_trackers(track, run.path, f"{Path(out).name}/seed-{seed}", described) as trackers:
        run.on_log = trackers.log
        results = module.run(config, run, seed, progress)
    write_json(results_path, results)
    return read_json(results_path)


def collect(name: str, preset: str, overrides: dict, out: str | Path, seeds: int) -> dict:
    """Aggregate seeds 0..seeds-1 (all finished) into out/results.json and return the summary."""
    described = prepare(name, preset, overrides, out)
    missing = [seed for seed in range(seeds) if not seed_finished(out, seed)]
    if missing:
        raise FileNotFoundError(f"{out}: seed(s) {missing} have no results.json yet")
    per_seed = [read_json(Path(out) / f"seed-{seed}" / "results.json") for seed in range(seeds)]
    summary = {"experiment": name, "preset": preset, "config": described, "seeds": seeds,
               "aggregate": aggregate(per_seed), "per_seed": per_seed}
    write_json(Path(out) / "results.json", summary)
    return summary


def run_experiment(name: str, preset: str, overrides: dict, out: str | Path, seeds: int = 1,
                   progress: bool = True, track: Sequence[str] = ()) -> dict:
    """Run (or resume) `seeds` seeds of an experiment into out/seed-<i>; write out/results.json."""
    prepare(name, preset, overrides, out)
    for seed in range(seeds):
        run_seed(name, preset, overrides, out, seed, progress, track)
    return collect(name, preset, overrides, out, seeds)
