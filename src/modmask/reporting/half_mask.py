"""The half-mask figure across configurations (paper §2.8, figure 11): for each finished run, the
accuracy drop when the Full mask is applied only to the early or only to the late layers."""

from __future__ import annotations

from pathlib import Path

from ..runs import read_json
from . import plots
from .tables import fmt, mean, std, table


def _label(summary: dict) -> str:
    config = summary["config"]
    task = {"addmul": "+/*", "doubleadd": "+/+"}.get(summary["experiment"], summary["experiment"])
    if config.get("model") == "lstm":
        return f"{task} LSTM"
    hidden = config.get("hidden")
    return f"{task} FNN {'x'.join(map(str, hidden))}" if hidden else task


def write_half_mask_figure(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Read each run's results.json, draw the grouped bars to `out` (PNG) and write a table next to
    it (`out` with .md). Runs without a half-mask test are an error that names them."""
    rows, labels, early, late = [], [], [], []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished run directory?")
        summary = read_json(path)
        half = summary["aggregate"].get("half_mask")
        if half is None:
            raise ValueError(f"{run_dir} ({summary['experiment']}) has no half-mask test")
        labels.append(_label(summary))
        early.append(half["early_masked_drop"])
        late.append(half["late_masked_drop"])
        rows.append([labels[-1], fmt(half["full_mask_accuracy"]), fmt(early[-1]), fmt(late[-1]), summary["seeds"]])
    out = Path(out)
    plots.bar_groups(out, labels, {"early masked": [mean(v) for v in early], "late masked": [mean(v) for v in late]},
                     {"early masked": [std(v) for v in early], "late masked": [std(v) for v in late]},
                     ylabel="accuracy drop [%]", title="Full mask on half of the layers", ylim=(0, 100))
    text = table(["configuration", "Full-mask accuracy [%]", "drop, early masked", "drop, late masked", "seeds"], rows)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text + f"\n\n![half mask]({out.name})\n")
    tmp.replace(out.with_suffix(".md"))
    return out
