"""Running an experiment: resolve the config once (`plan`), run each seed in its own run
directory (resuming what is there), and aggregate the finished seeds (mean and standard deviation).

`run_seed` runs one seed and `collect` aggregates, so a sweep can run the seeds of one run
directory as separate tasks (launch/sweep.py); `run_experiment` is both in a row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..config import ConfigError, build, parse_overrides, resolve, to_json
from ..core.mask_config import Execution
from ..runs import RunDir, aggregate, read_json, seed_dir, seed_finished, write_json
from ..runs.legacy import legacy_keys, upgrade
from ..tracking import open_trackers
from .catalogue import experiment_module


@dataclass(frozen=True)
class Plan:
    """One experiment's resolved run: the module, the config and its stored form, the directory."""

    name: str
    module: ModuleType
    preset: str
    config: Any
    out: Path

    @property
    def described(self) -> dict:
        """The config as config.json holds it."""
        return {"experiment": self.name, "preset": self.preset, **to_json(self.config)}

    def normalise(self, saved: dict) -> dict:
        """A stored config.json in today's form (legacy keys, per-variant defaults, new keys at
        their defaults), for the resume check."""
        upgraded = upgrade(saved)
        return {"experiment": upgraded.get("experiment"), "preset": upgraded.get("preset"),
                **to_json(build(self.module.Config, upgraded))}

    def check(self, path: Path) -> RunDir:
        """The run directory at `path`, its config.json written or checked against this plan."""
        run = RunDir(path)
        run.check_config(self.described, self.normalise, free=[f"execution.{f.name}" for f in dataclasses.fields(Execution)])
        return run


def overrides(name: str, pairs: Sequence[str]) -> dict:
    """Typed overrides (dotted keys) from `key=value` texts; flat legacy keys are accepted."""
    return parse_overrides(experiment_module(name).Config, list(pairs), legacy_keys(name))


def plan(name: str, preset: str, values: Mapping[str, Any] | None, out: str | Path) -> Plan:
    """Resolve the config (raises ConfigError for a bad preset, key or value) and check (or write)
    out/config.json: a directory that holds a run with other settings is refused."""
    module = experiment_module(name)
    config = resolve(module.Config, module.PRESETS, preset, values, legacy_keys(name))
    result = Plan(name, module, preset, config, Path(out))
    result.check(result.out)
    return result


def check_seeds(seeds: Iterable[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"seeds must be one or more numbers from 0 (got {seeds}): use --seeds N (N >= 1) "
                          f"and --seed-start S (S >= 0)")
    return seeds


def run_seed(plan: Plan, seed: int, *, device: torch.device | str = "cpu", progress: bool = True,
             track: Sequence[str] = ()) -> dict:
    """Run (or resume) one seed into out/seed-<seed> and return its results; a finished seed is
    only read. `track`: tracker names (modmask.tracking) that also receive the metrics."""
    run = plan.check(seed_dir(plan.out, seed))
    results_path = run.path / "results.json"
    if not results_path.exists():
        with open_trackers(track, run.path, f"{plan.out.name}/seed-{seed}", plan.described) as trackers:
            run.on_log = trackers.log
            results = plan.module.run(plan.config, run, seed, progress=progress, device=torch.device(device))
        write_json(results_path, results)
    return read_json(results_path)


def finished_seeds(out: str | Path) -> list[int]:
    """The seeds of a run directory that have results, in order."""
    found = [int(p.name[len("seed-"):]) for p in Path(out).glob("seed-*") if p.name[len("seed-"):].isdigit()]
    return sorted(s for s in found if seed_finished(out, s))


def collect(plan: Plan, seeds: Sequence[int] | None = None) -> dict:
    """Aggregate the given seeds (default: every finished seed of the directory, so seeds run on
    other machines join in) into out/results.json and return the summary."""
    seeds = check_seeds(finished_seeds(plan.out) if seeds is None else seeds)
    missing = [seed for seed in seeds if not seed_finished(plan.out, seed)]
    if missing:
        raise FileNotFoundError(f"{plan.out}: seed(s) {missing} have no results.json yet")
    for seed in seeds:
        plan.check(seed_dir(plan.out, seed))  # a seed copied in from elsewhere must have the same settings
    per_seed = [read_json(seed_dir(plan.out, seed) / "results.json") for seed in seeds]
    summary = {"experiment": plan.name, "preset": plan.preset, "config": plan.described, "seeds": len(seeds),
               "seed_list": seeds, "aggregate": aggregate(per_seed), "per_seed": per_seed}
    write_json(plan.out / "results.json", summary)
    return summary


def run_experiment(name: str, preset: str, values: Mapping[str, Any] | None, out: str | Path,
                   seeds: Iterable[int] = (0,), *, device: torch.device | str = "cpu", progress: bool = True,
                   track: Sequence[str] = ()) -> dict:
    """Run (or resume) the given seeds of an experiment into out/seed-<i>; write out/results.json
    over every finished seed there."""
    seeds = check_seeds(seeds)
    resolved = plan(name, preset, values, out)
    for seed in seeds:
        run_seed(resolved, seed, device=device, progress=progress, track=track)
    return collect(resolved)
