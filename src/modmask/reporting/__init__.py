"""Reports and figures built from finished run directories: reads results, never trains. One
module per experiment (write_report(out, summary)), the sweep report and the generic study's;
launch/catalogue.py picks the module that reports a given run directory."""

from __future__ import annotations

from pathlib import Path

from ..runs import read_json
from ..runs.legacy import upgrade


def read_summary(out: str | Path) -> tuple[Path, dict]:
    """(path, summary) of a run directory's results.json, the config of a run made before the mask
    settings were nested in today's form, so that it reports like a new one."""
    path = Path(out) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {out} a finished run directory? "
                                f"(`modmask run ... --out {out}` writes it)")
    summary = read_json(path)
    if "config" in summary:
        summary = {**summary, "config": upgrade(summary["config"])}
    return path, summary
