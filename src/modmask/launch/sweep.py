"""Seed and parameter sweeps on Ray: every combination of a grid of config values, times the
seeds, each run as one Ray task (the paper averages 10 seeds over many configurations).

A sweep directory holds sweep.json (experiment, preset, fixed overrides, grid, seeds, points) and
one ordinary run directory per grid point, `<point name>/` (config.json, seed-<i>/, results.json),
exactly as `modmask run` would write it with that point's overrides, so a point can be reported or
resumed on its own. Each task runs one seed of one point (runner.run_seed).

Restarting: a run whose seed-<i>/results.json exists is not submitted again; an unfinished run
resumes from what its directory holds (finished stages, checkpoints). Failures: a task whose worker
process dies (killed, out of memory, a lost node) or that raises is retried by Ray
(`max_retries`, `retry_exceptions`); the retry resumes the same run directory.

Ray is an optional dependency (`pip install 'modmask[sweep]'`). The grid is parsed and every
point's config checked before Ray starts, so a wrong key or value fails at once. On a cluster the
sweep directory must be on a filesystem that every node sees at the same path.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import re
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..allocator import keep_freed_memory
from ..config import ConfigError, field_types, parse_overrides
from ..runs import seed_finished, value_text
from ..runs.legacy import legacy_keys
from ..runs.sweep_file import write_sweep_file
from ..tracking import check_available
from .catalogue import experiment_module
from .placement import resolve_device
from .runner import collect, overrides, plan, run_seed

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    pass


@dataclass(frozen=True)
class Point:
    """One combination of grid values; `name` is its folder in the sweep directory."""
    name: str
    values: dict


def _is_tuple(kind) -> bool:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(kind))
    return typing.get_origin(kind) is tuple


def parse_grid(config_class, specs: Sequence[str], aliases: dict[str, str] | None = None) -> dict[str, list]:
    """['beta=1e-4,1e-3', 'hidden=16,16;32,32'] -> {'beta': [1e-4, 1e-3], 'hidden': [(16, 16), (32, 32)]}.

    Values are separated by ',' or ';' (';' only for tuple keys such as `hidden`, whose values
    contain commas); repeating a key adds values. Each value goes through the typed override
    parser, so a wrong key or value is the same error as for --set."""
    kinds = field_types(config_class)
    axes: dict[str, list] = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"grid {spec!r} is not key=value1,value2,...")
        key, text = spec.split("=", 1)
        canonical = (aliases or {}).get(key, key)  # the point names keep the key as given
        if canonical not in kinds:
            parse_overrides(config_class, [spec])  # raises the error that lists the valid keys
        parts = re.split(";" if _is_tuple(kinds[canonical]) else "[,;]", text)
        values = [parse_overrides(config_class, [f"{canonical}={part.strip()}"])[canonical]
                  for part in parts if part.strip()]
        if not values:
            raise ConfigError(f"grid {spec!r} has no values")
        axes.setdefault(key, [])
        axes[key] += [v for v in values if v not in axes[key]]
    return axes


def expand(axes: dict[str, list]) -> list[Point]:
    """Every combination, the first key varying slowest; no grid: one point named 'base'."""
    if not axes:
        return [Point("base", {})]
    combos = itertools.product(*axes.values())
    return [Point(",".join(f"{k}={value_text(v)}" for k, v in zip(axes, combo)), dict(zip(axes, combo)))
            for combo in combos]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def import_ray():
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise SweepError("modmask sweep runs on Ray, which is not installed: pip install 'modmask[sweep]'") from None


def start_ray(address: str | None = None, workers: int | None = None, cpus_per_run: float = 1.0) -> bool:
    """Connect to the cluster at `address`, or start a local Ray instance with CPUs for `workers`
    runs at once (default: all cores). Returns False when Ray was already initialised (the caller
    then must not shut it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)  # worker output stays in Ray's log files
    if address:
        ray.init(address=address, **quiet)
    else:
        cpus = workers * cpus_per_run if workers else os.cpu_count() or 1
        ray.init(num_cpus=max(1, int(round(cpus))), include_dashboard=False, **quiet)
    return True


def run_task(experiment: str, preset: str, values: dict, out: str, seed: int, threads: int = 1,
             track: Sequence[str] = ()) -> float:
    """One run (one seed of one point) in a Ray worker; returns its wall time in seconds."""
    import torch

    keep_freed_memory()
    torch.set_num_threads(max(1, threads))  # the task's share of the CPUs, not the whole node
    start = time.perf_counter()
    run_seed(plan(experiment, preset, values, out), seed, device=resolve_device("auto"), progress=False,
             track=track)
    return time.perf_counter() - start


def plan_grid(experiment: str, grid: Sequence[str] = (), sets: Sequence[str] = ()) -> tuple[dict, dict, list[Point]]:
    """(fixed overrides, grid axes, points) from the --set and --grid texts."""
    fixed = overrides(experiment, sets)
    aliases = legacy_keys(experiment)
    axes = parse_grid(experiment_module(experiment).Config, grid, aliases)
    both = sorted(set(fixed) & {aliases.get(k, k) for k in axes})
    if both:
        raise ConfigError(f"{', '.join(both)} is both set (--set) and swept (--grid)")
    return fixed, axes, expand(axes)


def run_sweep(experiment: str, preset: str, grid: Sequence[str] = (), seeds: int = 1, out: str | Path = "runs/sweep",
              *, sets: Sequence[str] = (), address: str | None = None, workers: int | None = None,
              cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, retries: int = 2,
              track: Sequence[str] = (), task: Callable[..., float] = run_task) -> dict:
    """Run (or resume) every grid point x seed as a Ray task into out/<point>/seed-<i>.

    `task` is what each Ray task runs (run_task's arguments; tests wrap it). Returns {"out", "runs",
    "skipped", "ran", "failed": ["<point>/seed-<i>: error", ...]}; each point whose seeds all
    finished gets its results.json (mean and std over seeds)."""
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    fixed, axes, points = plan_grid(experiment, grid, sets)
    check_available(track)
    ray = import_ray()
    out = Path(out).resolve()  # workers may run in another working directory
    # resolves each point's config and refuses a folder with other settings
    plans = {point.name: plan(experiment, preset, {**fixed, **point.values}, out / point.name) for point in points}
    write_sweep_file(out, {"experiment": experiment, "preset": preset, "set": _jsonable(fixed),
                           "grid": _jsonable(axes), "seeds": seeds,
                           "points": [{"name": p.name, "values": _jsonable(p.values)} for p in points]})
    runs = [(p, s) for p in points for s in range(seeds)]
    todo = [(p, s) for p, s in runs if not seed_finished(out / p.name, s)]
    log.info("sweep %s: %d run(s), %d finished before (skipped), %d to run", out, len(runs), len(runs) - len(todo),
             len(todo))
    failed = []
    if todo:
        started = start_ray(address, workers, cpus_per_run)
        try:
            failed = _run_tasks(ray, task, experiment, preset, fixed, out, todo, cpus_per_run, gpus_per_run,
                                retries, track)
        finally:
            if started:
                ray.shutdown()
    for point in points:
        if all(seed_finished(out / point.name, s) for s in range(seeds)):
            collect(plans[point.name], range(seeds))
    return {"out": out, "runs": len(runs), "skipped": len(runs) - len(todo), "ran": len(todo) - len(failed),
            "failed": failed}


def _run_tasks(ray, task, experiment, preset, fixed, out: Path, todo, cpus_per_run, gpus_per_run, retries,
               track) -> list[str]:
    """Submit every run, wait for all; returns the runs that failed after their retries."""
    remote = ray.remote(task)
    resources = dict(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries, retry_exceptions=True)
    pending = {}
    for point, seed in todo:
        name = f"{point.name}/seed-{seed}"
        ref = remote.options(name=name, **resources).remote(experiment, preset, {**fixed, **point.values},
                                                            str(out / point.name), seed, max(1, int(cpus_per_run)),
                                                            tuple(track))
        pending[ref] = name
    failed, done = [], 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            name = pending.pop(ref)
            done += 1
            try:
                seconds = ray.get(ref)
                log.info("[%d/%d] %s finished in %.1f s", done, len(todo), name, seconds)
            except ray.exceptions.RayError as error:
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                failed.append(f"{name}: {reason}")
                log.error("[%d/%d] %s failed after %d retries: %s", done, len(todo), name, retries, reason)
    return failed
