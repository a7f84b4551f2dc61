"""Command line: `modmask list`, `modmask run EXPERIMENT ...`, `modmask sweep EXPERIMENT ...`,
`modmask report RUN_DIR`, `modmask curve RUN_DIR ...`."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .allocator import keep_freed_memory
from .config import ConfigError, field_types
from .launch.catalogue import EXPERIMENTS, experiment_module, write_report
from .launch.placement import resolve_device
from .launch.runner import overrides, recompute_curves, run_experiment
from .launch.sweep import SweepError, run_sweep
from .reporting.half_mask import write_half_mask_figure
from .tracking import TrackerUnavailable, check_available, parse_track


def _list(_args) -> int:
    for name in EXPERIMENTS:
        module = experiment_module(name)
        print(f"{name}: {module.DESCRIPTION}")
        print(f"  presets: {', '.join(module.PRESETS)}")
        print(f"  keys: {', '.join(field_types(module.Config))}")
    return 0


def _run(args) -> int:
    device = resolve_device(args.device)
    values = overrides(args.experiment, args.set)
    out = args.out or f"runs/{args.experiment}-{args.preset}"
    track = parse_track(args.track)
    check_available(track)
    start = time.perf_counter()
    run_experiment(args.experiment, args.preset, values, out, range(args.seed_start, args.seed_start + args.seeds),
                   device=device, progress=not args.quiet, track=track)
    report = write_report(out)
    logging.info("finished in %.1f s; report: %s", time.perf_counter() - start, report)
    print(report)
    return 0


def _sweep(args) -> int:
    out = args.out or f"runs/sweep-{args.experiment}-{args.preset}"
    start = time.perf_counter()
    summary = run_sweep(args.experiment, args.preset, args.grid, args.seeds, out, sets=args.set,
                        address=args.address, workers=args.workers, cpus_per_run=args.cpus_per_run,
                        gpus_per_run=args.gpus_per_run, retries=args.retries, track=parse_track(args.track))
    report = write_report(out)
    logging.info("sweep finished in %.1f s: %d run(s), %d skipped, %d ran, %d failed; report: %s",
                 time.perf_counter() - start, summary["runs"], summary["skipped"], summary["ran"],
                 len(summary["failed"]), report)
    print(report)
    for failure in summary["failed"]:
        print(f"modmask: failed: {failure}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _report(args) -> int:
    print(write_report(args.run_dir))
    return 0


def _curve(args) -> int:
    recompute_curves(args.run_dir, args.set, device=resolve_device(args.device), progress=not args.quiet)
    print(write_report(args.run_dir))
    return 0


def _half_mask(args) -> int:
    print(write_half_mask_figure(args.run_dirs, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modmask", description="Which weights implement which function: "
                                     "differentiable weight masks (Csordás et al., ICLR 2021).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="experiments, presets and config keys").set_defaults(func=_list)
    run = commands.add_parser("run", help="run (or resume) an experiment and write its report")
    run.add_argument("experiment")
    run.add_argument("--preset", default="small", help="smoke, small or paper (default small)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    run.add_argument("--seed-start", type=int, default=0, help="first seed (default 0): runs seeds S..S+N-1; "
                     "results.json aggregates every finished seed of the directory")
    run.add_argument("--out", help="run directory (default runs/EXPERIMENT-PRESET)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--track", metavar="NAMES", help="also log metrics to tensorboard and/or wandb (comma-separated)")
    run.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    run.set_defaults(func=_run)
    sweep = commands.add_parser("sweep", help="run every combination of grid values x seeds as Ray tasks "
                                "(needs pip install 'modmask[sweep]')")
    sweep.add_argument("experiment")
    sweep.add_argument("--preset", default="small", help="smoke, small or paper (default small)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="values of a config key to sweep (repeatable; ';' separates values of tuple keys "
                            "such as hidden='16,16;32,32')")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key everywhere")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per grid point (0..N-1)")
    sweep.add_argument("--out", help="sweep directory (default runs/sweep-EXPERIMENT-PRESET)")
    sweep.add_argument("--address", help="an existing Ray cluster (e.g. auto or ray://HOST:10001); "
                                         "default: a local Ray instance")
    sweep.add_argument("--workers", type=int, help="local instance: runs at once (default: all cores / --cpus-per-run)")
    sweep.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run requests (and torch threads)")
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each run requests from Ray (default 0)")
    sweep.add_argument("--retries", type=int, default=2, help="retries of a run whose worker died or that failed")
    sweep.add_argument("--track", metavar="NAMES", help="also log metrics to tensorboard and/or wandb (comma-separated)")
    sweep.set_defaults(func=_sweep)
    report = commands.add_parser("report", help="rebuild the report of a run or sweep directory, without training")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    curve = commands.add_parser("curve", help="recompute the curves over density of a finished run with other "
                                "curve settings (curves.*), without retraining its masks, and rewrite its report")
    curve.add_argument("run_dir")
    curve.add_argument("--set", action="append", default=[], metavar="curves.KEY=VALUE",
                       help="a curve setting over the run's (densities, baselines, random_draws, subset, enabled, "
                            "train: also train a mask to each density, once)")
    curve.add_argument("--quiet", action="store_true", help="no progress bars")
    curve.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    curve.set_defaults(func=_curve)
    half = commands.add_parser("half-mask", help="the half-mask figure across finished runs (paper figure 11)")
    half.add_argument("run_dirs", nargs="+")
    half.add_argument("--out", default="runs/half_mask.png", help="PNG path; a Markdown table is written beside it")
    half.set_defaults(func=_half_mask)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keep_freed_memory()
    try:
        return args.func(args)
    except (ConfigError, KeyError, FileNotFoundError, ValueError, SweepError, TrackerUnavailable) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"modmask: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
