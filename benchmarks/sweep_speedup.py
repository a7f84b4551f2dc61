"""Speed-up of a sweep on Ray against running its runs one after another, measured in one run.

    python benchmarks/sweep_speedup.py [--workers 2] [--set key=value ...] [--quick]

Both sides do the same 4 runs, the add/mul FNN over 2 betas x 2 seeds, each into a fresh
temporary directory: first one after another in this process (as `modmask run` would; torch uses
its default threads, i.e. all cores), then as a Ray sweep on a local instance with `--workers`
workers (one CPU and one torch thread per run). Prints one line:

    runs=4 workers=2 run_s=.. sequential_s=.. ray_start_s=.. ray_sweep_s=.. speedup=.. speedup_after_start=..

`speedup` counts Ray's start (a local instance and its worker processes) in the sweep's time;
`speedup_after_start` does not (what a long sweep approaches). The runs are the smoke preset made
longer (a 128x128 FNN, 3,000 pretraining and 3 x 1,000 mask steps), so that one run takes several
seconds and Ray's start does not dominate: the smoke preset's runs (a few seconds each) are about as
long as Ray's start itself. `--quick` only checks that everything works (tiny runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from modmask.allocator import keep_freed_memory
from modmask.launch import sweep
from modmask.launch.runner import run_experiment

GRID = ["beta=1e-4,1e-3"]
SEEDS = 2
LONGER = ["hidden=128,128", "pretrain_steps=3000", "mask_steps=1000", "checkpoint_every=1000"]
QUICK = ["pretrain_steps=20", "mask_steps=10"]


def sequential(points, fixed: dict, out: Path) -> float:
    """All runs one after another in this process; wall seconds."""
    start = time.perf_counter()
    for point in points:
        run_experiment("addmul", "smoke", {**fixed, **point.values}, out / point.name, seeds=SEEDS, progress=False)
    return time.perf_counter() - start


def on_ray(workers: int, sets: list[str], out: Path) -> tuple[float, float]:
    """(seconds to start a local Ray instance, seconds of the sweep on it)."""
    start = time.perf_counter()
    sweep.start_ray(workers=workers)
    started = time.perf_counter()
    try:
        summary = sweep.run_sweep("addmul", "smoke", GRID, SEEDS, out, sets=sets)
    finally:
        sweep.import_ray().shutdown()
    if summary["failed"] or summary["ran"] != summary["runs"]:
        raise RuntimeError(f"the sweep did not run every run: {summary}")
    return started - start, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="runs at once on the local Ray instance")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="config of every run (default: the longer smoke runs described above)")
    parser.add_argument("--quick", action="store_true", help="tiny runs: only checks that it works")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()  # as the command line and the Ray workers do
    sets = args.set if args.set is not None else (QUICK if args.quick else LONGER)
    fixed, _, points = sweep.plan("addmul", "smoke", GRID, sets)
    runs = len(points) * SEEDS
    with tempfile.TemporaryDirectory(prefix="sweep-speedup-") as tmp:
        one_by_one = sequential(points, fixed, Path(tmp) / "sequential")
        ray_start, ray_sweep = on_ray(args.workers, sets, Path(tmp) / "ray")
    print(f"runs={runs} workers={args.workers} cores={os.cpu_count()} torch_threads={torch.get_num_threads()} "
          f"config={','.join(sets)} run_s={one_by_one / runs:.1f} sequential_s={one_by_one:.1f} "
          f"ray_start_s={ray_start:.1f} ray_sweep_s={ray_sweep:.1f} "
          f"speedup={one_by_one / (ray_start + ray_sweep):.2f} speedup_after_start={one_by_one / ray_sweep:.2f}")


if __name__ == "__main__":
    main()
