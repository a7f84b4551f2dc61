"""Running an experiment: resolve the config once (`plan`), run each seed in its own run
directory (resuming what is there), and aggregate the finished seeds (mean and standard deviation).

`run_seed` runs one seed and `collect` aggregates, so a sweep can run the seeds of one run
directory as separate tasks (launch/sweep.py); `run_experiment` is both in a row. `recompute_curves`
re-runs the analysis of a finished run with other curve settings, without training.

Settings groups of two kinds may differ when a run resumes: `execution` (how steps run; config.json
keeps the values the run started with) and the analysis groups (`curves`: what is measured of the
trained masks), which config.json records as the results were computed with them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..config import ConfigError, build, field_types, flatten, parse_overrides, resolve, to_json
from ..core.curves import CurveConfig
from ..core.mask_config import Execution
from ..runs import RunDir, aggregate, read_json, seed_dir, seed_finished, write_json
from ..runs.legacy import legacy_keys, upgrade
from ..runs.stage import mask_diagnoses
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
        free = [f"{group}.{f.name}" for group, record in (("execution", Execution), *ANALYSIS.items())
                for f in dataclasses.fields(record)]
        run.check_config(self.described, self.normalise, free=free)
        return run

    def analysis(self, path: Path) -> dict:
        """The analysis groups (ANALYSIS) of the config.json in `path`, in today's form."""
        return _analysis_of(self.normalise(read_json(Path(path) / "config.json")))


# settings groups that change only the analysis of trained masks, never what trains: free to change
# when a run resumes, and recorded in config.json as the results there were computed with them
ANALYSIS = {"curves": CurveConfig}


def _analysis_of(described: dict) -> dict:
    return {group: described[group] for group in ANALYSIS if group in described}


def record_analysis(path: Path, described: dict) -> None:
    """Rewrite the analysis groups of path/config.json to those of `described` (a config as
    config.json holds it): the settings the results there are, or are about to be, computed with."""
    saved = read_json(Path(path) / "config.json")
    groups = _analysis_of(described)
    if any(saved.get(group) != value for group, value in groups.items()):
        write_json(Path(path) / "config.json", {**saved, **groups})


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
        record_analysis(run.path, plan.described)  # the results will use this run's curve settings
        with open_trackers(track, run.path, f"{plan.out.name}/seed-{seed}", plan.described) as trackers:
            run.on_log = trackers.log
            results = _results(plan, run, seed, device, progress)
        write_json(results_path, results)
    elif plan.analysis(run.path) != _analysis_of(plan.described):
        logging.warning("%s is finished: its curves keep the settings they were computed with (config.json); "
                        "`modmask curve %s --set curves.KEY=VALUE` recomputes them without training", run.path, plan.out)
    return read_json(results_path)


def _results(plan: Plan, run: RunDir, seed: int, device, progress: bool) -> dict:
    """One seed's results: the study's own, and every mask stage's diagnosis (settled, on target,
    function kept: core/density.diagnose) under "training", which every report shows."""
    results = plan.module.run(plan.config, run, seed, progress=progress, device=torch.device(device))
    return {**results, "training": mask_diagnoses(run)}


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
    analyses = {seed: plan.analysis(seed_dir(plan.out, seed)) for seed in seeds}
    if len({json.dumps(a, sort_keys=True) for a in analyses.values()}) > 1:
        raise ValueError(f"{plan.out}: the seeds' curves were computed with different settings "
                         f"({'; '.join(f'seed {s}: {a}' for s, a in analyses.items())}), so they cannot be averaged; "
                         f"run `modmask curve {plan.out} --set curves.KEY=VALUE ...` to recompute them all alike")
    analysis = analyses[seeds[0]]
    record_analysis(plan.out, analysis)
    per_seed = [read_json(seed_dir(plan.out, seed) / "results.json") for seed in seeds]
    summary = {"experiment": plan.name, "preset": plan.preset, "config": {**plan.described, **analysis},
               "seeds": len(seeds), "seed_list": seeds, "aggregate": aggregate(per_seed), "per_seed": per_seed}
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


def recompute_curves(out: str | Path, pairs: Sequence[str] = (), *, device: torch.device | str = "cpu",
                     progress: bool = True) -> dict:
    """Re-run the analysis of every finished seed of the run directory `out` with its config.json
    and the curve settings `pairs` ("curves.KEY=VALUE") over it, without retraining: each seed's
    run() runs again, loading its pretrained network and masks from their files (only masks that do
    not exist yet train: those of curves.train, once), and its new results replace results.json
    atomically (a failure leaves the old ones); then the seeds are aggregated again (collect).
    Raises before any work for a directory that is not a run, an experiment without curves, a key
    that is not a curve setting, or a run with no finished seed."""
    out = Path(out)
    if not (out / "config.json").is_file():
        raise FileNotFoundError(f"{out} is not a run directory (it has no config.json): pass the directory "
                                f"`modmask run` wrote (its --out), e.g. runs/addmul-small")
    saved = upgrade(read_json(out / "config.json"))
    name = saved.get("experiment")
    module = experiment_module(name)
    if not any(key.startswith("curves.") for key in field_types(module.Config)):
        raise ConfigError(f"experiment {name!r} computes no curves over density (its config has no curves group)")
    values = overrides(name, list(pairs))
    others = sorted(key for key in values if not key.startswith("curves."))
    if others:
        raise ConfigError(f"modmask curve changes curve settings only (curves.*), not {others}: other settings "
                          f"change what trains, so run them with `modmask run` into another --out")
    stored = flatten({k: v for k, v in saved.items() if k not in ("experiment", "preset")})
    resolved = plan(name, saved.get("preset"), {**stored, **values}, out)
    seeds = finished_seeds(out)
    if not seeds:
        raise FileNotFoundError(f"{out} has no finished seed (seed-<i>/results.json): finish the run first "
                                f"(modmask run {name} --out {out} ...)")
    for seed in seeds:
        run = resolved.check(seed_dir(out, seed))
        results = _results(resolved, run, seed, device, progress)
        record_analysis(run.path, resolved.described)
        write_json(run.path / "results.json", results)
    return collect(resolved)
