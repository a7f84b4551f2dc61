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
import threading
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..allocator import keep_freed_memory
from ..tracking import check_available
from . import registry
from .config import ConfigError, field_types, parse_overrides
from .rundir import read_json, write_json
from .runner import collect, prepare, run_seed, seed_finished

SWEEP_FILE = "sweep.json"
KILL_ONCE_ENV = "MODMASK_TEST_KILL_ONCE"  # test hook, see _kill_once
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


def parse_grid(config_class, specs: Sequence[str]) -> dict[str, list]:
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
        if key not in kinds:
            parse_overrides(config_class, [spec])  # raises the error that lists the valid keys
        parts = re.split(";" if _is_tuple(kinds[key]) else "[,;]", text)
        values = [parse_overrides(config_class, [f"{key}={part.strip()}"])[key] for part in parts if part.strip()]
        if not values:
            raise ConfigError(f"grid {spec!r} has no values")
        axes.setdefault(key, [])
        axes[key] += [v for v in values if v not in axes[key]]
    return axes


def value_text(value: Any) -> str:
    """A grid value as it appears in folder names: 0.0001, 16x16, true."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "x".join(value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def expand(axes: dict[str, list]) -> list[Point]:
    """Every combination, the first key varying slowest; no grid: one point named 'base'."""
    if not axes:
        return [Point("base", {})]
    combos = itertools.product(*axes.values())
    return [Point(",".join(f"{k}={value_text(v)}" for k, v in zip(axes, combo)), dict(zip(axes, combo)))
            for combo in combos]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _write_sweep_file(out: Path, description: dict) -> None:
    """Write sweep.json, or refuse a directory that holds another sweep (seeds may change)."""
    path = out / SWEEP_FILE
    if path.exists():
        saved = read_json(path)
        changed = sorted(k for k in set(saved) | set(description)
                         if k != "seeds" and saved.get(k) != description.get(k))
        if changed:
            raise SweepError(f"{out} holds a sweep with other settings ({', '.join(changed)}); use another "
                             f"--out directory or the same settings to resume it")
    write_json(path, description)


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


def _kill_once(marker: str, metrics: Path) -> None:
    """Test hook (MODMASK_TEST_KILL_ONCE=<marker file>): the first task to create the marker file
    kills its own worker process as soon as its run has written metrics, as a lost worker would."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return

    def watch():
        while not (metrics.exists() and metrics.stat().st_size > 0):
            time.sleep(0.005)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_task(experiment: str, preset: str, overrides: dict, out: str, seed: int, threads: int = 1,
             track: Sequence[str] = (), kill_once: str | None = None) -> float:
    """One run (one seed of one point) in a Ray worker; returns its wall time in seconds."""
    import torch

    keep_freed_memory()
    torch.set_num_threads(max(1, threads))  # the task's share of the CPUs, not the whole node
    if kill_once:
        _kill_once(kill_once, Path(out) / f"seed-{seed}" / "metrics.jsonl")
    start = time.perf_counter()
    run_seed(experiment, preset, overrides, out, seed, progress=False, track=track)
    return time.perf_counter() - start


def plan(experiment: str, preset: str, grid: Sequence[str] = (), sets: Sequence[str] = ()) -> tuple[dict, dict, list[Point]]:
    """(fixed overrides, grid axes, points) from the --set and --grid texts."""
    module = registry.get(experiment)
    fixed = parse_overrides(module.Config, list(sets))
    axes = parse_grid(module.Config, grid)
    both = sorted(set(fixed) & set(axes))
    if both:
        raise ConfigError(f"{', '.join(both)} is both set (--set) and swept (--grid)")
    return fixed, axes, expand(axes)


def run_sweep(experiment: str, preset: str, grid: Sequence[str] = (), seeds: int = 1, out: str | Path = "runs/sweep",
              *, sets: Sequence[str] = (), address: str | None = None, workers: int | None = None,
              cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, retries: int = 2,
              track: Sequence[str] = ()) -> dict:
    """Run (or resume) every grid point x seed as a Ray task into out/<point>/seed-<i>.

    Returns {"out", "runs", "skipped", "ran", "failed": ["<point>/seed-<i>: error", ...]}; each
    point whose seeds all finished gets its results.json (mean and std over seeds)."""
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    fixed, axes, points = plan(experiment, preset, grid, sets)
    check_available(track)
    ray = import_ray()
    out = Path(out).resolve()  # workers may run in another working directory
    for point in points:  # resolves each point's config and refuses a folder with other settings
        prepare(experiment, preset, {**fixed, **point.values}, out / point.name)
    _write_sweep_file(out, {"experiment": experiment, "preset": preset, "set": _jsonable(fixed),
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
            failed = _run_tasks(ray, experiment, preset, fixed, out, todo, cpus_per_run, gpus_per_run, retries, track)
        finally:
            if started:
                ray.shutdown()
    for point in points:
        if all(seed_finished(out / point.name, s) for s in range(seeds)):
            collect(experiment, preset, {**fixed, **point.values}, out / point.name, seeds)
    return {"out": out, "runs": len(runs), "skipped": len(runs) - len(todo), "ran": len(todo) - len(failed),
            "failed": failed}


def _run_tasks(ray, experiment, preset, fixed, out: Path, todo, cpus_per_run, gpus_per_run, retries, track) -> list[str]:
    """Submit every run, wait for all; returns the runs that failed after their retries."""
    task = ray.remote(run_task)
    resources = dict(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries, retry_exceptions=True)
    kill_once = os.environ.get(KILL_ONCE_ENV)
    pending = {}
    for point, seed in todo:
        name = f"{point.name}/seed-{seed}"
        ref = task.options(name=name, **resources).remote(experiment, preset, {**fixed, **point.values}, str(out / point.name),
                                             seed, max(1, int(cpus_per_run)), tuple(track), kill_once)
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
