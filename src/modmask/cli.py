"""Command line: `modmask list`, `modmask run EXPERIMENT ...`, `modmask report RUN_DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .allocator import keep_freed_memory
from .experiments import registry
from .experiments.config import ConfigError, field_types, parse_overrides
from .experiments.runner import run_experiment
from .reporting import write_report
from .reporting.half_mask import write_half_mask_figure


def _list(_args) -> int:
    for name in registry.EXPERIMENTS:
        module = registry.get(name)
        print(f"{name}: {module.DESCRIPTION}")
        print(f"  presets: {', '.join(module.PRESETS)}")
        print(f"  keys: {', '.join(field_types(module.Config))}")
    return 0


def _run(args) -> int:
    module = registry.get(args.experiment)
    overrides = parse_overrides(module.Config, args.set)
    out = args.out or f"runs/{args.experiment}-{args.preset}"
    start = time.perf_counter()
    run_experiment(args.experiment, args.preset, overrides, out, seeds=args.seeds,
                   progress=not args.quiet)
    report = write_report(out)
    logging.info("finished in %.1f s; report: %s", time.perf_counter() - start, report)
    print(report)
    return 0


def _report(args) -> int:
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
    run.add_argument("--seeds", type=int, default=1, help="number of seeds (run 0..N-1)")
    run.add_argument("--out", help="run directory (default runs/EXPERIMENT-PRESET)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)
    report = commands.add_parser("report", help="rebuild the report of a run directory, without training")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    half = commands.add_parser("half-mask", help="the half-mask figure across finished runs (paper figure 11)")
    half.add_argument("run_dirs", nargs="+")
    half.add_argument("--out", default="runs/half_mask.png", help="PNG path; a Markdown table is written beside it")
    half.set_defaults(func=_half_mask)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keep_freed_memory()
    try:
        return args.func(args)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"modmask: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
