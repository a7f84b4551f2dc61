"""A sweep directory: sweep.json (experiment, preset, fixed overrides, grid, seeds, points) and one
ordinary run directory per grid point, named from its values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .rundir import read_json, write_json

SWEEP_FILE = "sweep.json"


def value_text(value: Any) -> str:
    """A grid value as it appears in folder names: 0.0001, 16x16, true."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "x".join(value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def write_sweep_file(out: Path, description: dict) -> None:
    """Write sweep.json, or refuse a directory that holds another sweep (seeds may change)."""
    path = out / SWEEP_FILE
    if path.exists():
        saved = read_json(path)
        changed = sorted(k for k in set(saved) | set(description)
                         if k != "seeds" and saved.get(k) != description.get(k))
        if changed:
            raise ValueError(f"{out} holds a sweep with other settings ({', '.join(changed)}); use another "
                             f"--out directory or the same settings to resume it")
    write_json(path, description)
