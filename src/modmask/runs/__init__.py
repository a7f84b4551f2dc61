"""Run directories: their format, atomic JSON, resume checks, aggregation over seeds and sweep
files; resumable mask stages in a run directory (runs.stage) and the generic study (runs.study:
`Function`, `run_study` without the report). Experiments write through this layer and reporting
reads through it, so neither imports the other."""

from .rundir import RunDir, read_json, write_json, write_text
from .seeds import aggregate, seed_dir, seed_finished
from .sweep_file import SWEEP_FILE, value_text

__all__ = ["RunDir", "read_json", "write_json", "write_text", "aggregate", "seed_dir", "seed_finished",
           "SWEEP_FILE", "value_text"]
