"""A run directory: config, metrics, checkpoints, masks, results, figures, report.

Every file is written atomically (a temporary file, then a rename), so a run killed at any point
leaves complete files only, and the same command resumes from what is there.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import flatten


def _clean(value):
    """JSON-safe: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(_clean(value), indent=1) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class RunDir:
    """Paths and bookkeeping of one run (one seed)."""

    def __init__(self, path: str | os.PathLike, on_log: Callable[[dict], None] | None = None):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file, not a run directory: choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.on_log = on_log  # also receives every logged record (experiment tracking, modmask.tracking)

    def child(self, name: str) -> "RunDir":
        """A run directory inside this one (a module, a sweep point) whose metrics reach the same
        trackers."""
        return RunDir(self.path / name, on_log=self.on_log)

    def file(self, *parts: str) -> Path:
        path = self.path.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def check_config(self, config: dict, normalise: Callable[[dict], dict] | None = None,
                     free: Iterable[str] = ()) -> None:
        """Write config.json, or refuse to resume a run made with other settings. `normalise` turns
        the saved config into today's form (legacy keys, settings added since, which take their
        defaults), so run directories stay resumable across versions. `free`: dotted keys that
        may differ (settings that do not change the results, e.g. execution.samples_per_pass); the
        file keeps the values the run started with."""
        path = self.path / "config.json"
        if path.exists():
            saved = read_json(path)
            # dotted keys, JSON round-tripped so that tuples and lists compare equal
            saved = flatten(json.loads(json.dumps(_clean(normalise(saved) if normalise else saved))))
            wanted = flatten(json.loads(json.dumps(_clean(config))))
            changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k) and k not in free)
            if changed:
                raise ValueError(f"{self.path} holds a run with other settings ({', '.join(changed)}); "
                                 f"use another --out directory or the same settings to resume it")
        else:
            write_json(path, config)

    def log(self, record: dict) -> None:
        """Append one line to metrics.jsonl (a torn last line is skipped when read)."""
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(json.dumps(_clean(record)) + "\n")
        if self.on_log is not None:
            self.on_log(record)

    @contextmanager
    def timed(self, phase: str):
        """Record the wall time of a phase in timings.json. A phase already timed (finished before
        a resume) keeps its first time; a phase resumed mid-way adds the two parts."""
        start = time.perf_counter()
        done_before = phase in self.timings()
        yield
        if not done_before or self.timings()[phase] is None:
            timings = self.timings()
            timings[phase] = round(time.perf_counter() - start, 2)
            write_json(self.path / "timings.json", timings)

    def timings(self) -> dict:
        path = self.path / "timings.json"
        return read_json(path) if path.exists() else {}
