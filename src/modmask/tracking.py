"""Optional experiment tracking: the metrics a run logs (RunDir.log, metrics.jsonl) also go to
TensorBoard event files or to Weights & Biases, inside the run directory.

Neither package is a dependency: `tensorboard` uses `torch.utils.tensorboard` when the
`tensorboard` package is installed, else `tensorboardX`; `wandb` uses the `wandb` package, offline
unless WANDB_MODE says otherwise (offline runs need no account; `wandb sync` uploads them later).

Records are the lines of metrics.jsonl: {"phase": "pretrain" | "mask:<function>" | ..., "step": int,
<metric>: number, ...}. Each number is logged as "<phase>/<metric>" at "step" (':' in a phase becomes
'/', as TensorBoard tags allow no ':': "mask/add/loss"); steps restart in every phase, so each phase
is its own series.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

TRACKERS = ("tensorboard", "wandb")


class TrackerUnavailable(RuntimeError):
    """A tracker was asked for whose package is not installed."""


def parse_track(text: str | None) -> tuple[str, ...]:
    """'tensorboard,wandb' -> ('tensorboard', 'wandb'); unknown names are a ValueError."""
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; trackers: {', '.join(TRACKERS)}")
    return names


def _summary_writer_class():
    """torch's SummaryWriter (needs the tensorboard package), else tensorboardX's."""
    try:
        importlib.import_module("tensorboard")
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        pass
    try:
        return importlib.import_module("tensorboardX").SummaryWriter
    except ImportError:
        raise TrackerUnavailable("--track tensorboard needs the tensorboard or tensorboardX package: "
                                 "pip install tensorboard (or tensorboardX)") from None


def _wandb():
    try:
        return importlib.import_module("wandb")
    except ImportError:
        raise TrackerUnavailable("--track wandb needs the wandb package: pip install wandb") from None


def check_available(names: Sequence[str]) -> None:
    """Raise TrackerUnavailable now (before any training) if a tracker's package is missing."""
    if "tensorboard" in names:
        _summary_writer_class()
    if "wandb" in names:
        _wandb()


def _scalars(record: dict) -> tuple[str, int | None, dict[str, float]]:
    """(phase, step, {metric: value}) of one record; only numbers are tracked."""
    phase = str(record.get("phase", "metrics")).replace(":", "/")
    step = record.get("step")
    values = {k: float(v) for k, v in record.items()
              if k not in ("phase", "step") and isinstance(v, numbers.Real) and not isinstance(v, bool)}
    return phase, step if isinstance(step, int) else None, values


class TensorBoardTracker:
    """Event files in <run>/tensorboard (`tensorboard --logdir` on a run or sweep directory)."""

    def __init__(self, run_path: Path, name: str, config: dict):
        self.writer = _summary_writer_class()(log_dir=str(Path(run_path) / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")
        self.counters: dict[str, int] = {}

    def log(self, record: dict) -> None:
        phase, step, values = _scalars(record)
        if step is None:  # records without a step are numbered in order
            step = self.counters[phase] = self.counters.get(phase, -1) + 1
        for key, value in values.items():
            self.writer.add_scalar(f"{phase}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in <run>/wandb; offline by default (WANDB_MODE=online to sync while running)."""

    def __init__(self, run_path: Path, name: str, config: dict):
        wandb = _wandb()
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "modmask"), name=name, config=config,
                              dir=str(run_path), mode=os.environ.get("WANDB_MODE", "offline"))
        self.phases: set[str] = set()

    def log(self, record: dict) -> None:
        phase, step, values = _scalars(record)
        if phase not in self.phases:  # W&B steps must only grow: each phase gets its own step axis
            self.phases.add(phase)
            self.run.define_metric(f"{phase}/step")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
        row = {f"{phase}/{key}": value for key, value in values.items()}
        if step is not None:
            row[f"{phase}/step"] = step
        self.run.log(row)

    def close(self) -> None:
        self.run.finish()


ADAPTERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


class Trackers:
    """Several trackers as one: `log(record)` goes to each."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, record: dict) -> None:
        for tracker in self.trackers:
            tracker.log(record)


@contextmanager
def open_trackers(names: Sequence[str], run_path: Path, name: str, config: dict) -> Iterator[Trackers]:
    """The named trackers for one run (closed at the end, also on an error); none: a no-op."""
    opened = []
    try:
        for tracker in names:
            if tracker not in ADAPTERS:
                raise ValueError(f"unknown tracker {tracker!r}; trackers: {', '.join(TRACKERS)}")
            opened.append(ADAPTERS[tracker](Path(run_path), name, config))
        yield Trackers(opened)
    finally:
        for tracker in opened:
            tracker.close()
