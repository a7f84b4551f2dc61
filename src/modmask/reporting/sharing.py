"""Report of the sharing sweeps (paper §2.9, figures 8 and 9)."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .study import save_report
from .tables import fmt, mean, std, table, timings_table

PAPER_FINDING = {
    "size": "The paper: larger FNNs share a smaller fraction of weights between the + and * masks.",
    "beta": "The paper: the total shared fraction stays roughly between 25% and 55% across beta, while "
            "the Full mask's accuracy falls once beta is too large (its figure stars beta = 1e-4).",
}


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    points = agg["points"]
    sweep = agg["sweep"]
    metrics = {"shared (+ mask)": "shared_add", "shared (* mask)": "shared_mul", "IoU": "iou"}
    rows = [[p["size"], fmt(p["beta"], 6) if not isinstance(p["beta"], dict) else f"{mean(p['beta']):g}",
             fmt(p["weights_add"], 0), fmt(p["weights_mul"], 0), fmt(p["shared_add"], 3), fmt(p["shared_mul"], 3),
             fmt(p["iou"], 3), fmt(p["full_accuracy"])] for p in points]
    text = [f"# Weight sharing of the + and * masks against {sweep}", "",
            f"Preset `{summary['preset']}`, {summary['seeds']} seed(s) (mean ± std).", "",
            "## Finding", "", PAPER_FINDING[sweep], "",
            table(["network", "beta", "weights +", "weights *", "shared +", "shared *", "IoU", "Full acc. [%]"], rows),
            ""]
    if sweep == "size":
        labels = [p["size"] for p in points]
        plots.line_plot(figures / "sharing_vs_size.png", labels,
                        {k: [mean(p[v]) * 100 for p in points] for k, v in metrics.items()},
                        {k: [std(p[v]) * 100 for p in points] for k, v in metrics.items()},
                        xlabel="network", ylabel="[%]", title="Sharing between the + and * masks")
        first, last = mean(points[0]["shared_add"]), mean(points[-1]["shared_add"])
        text += [f"Measured: the + mask shares {first * 100:.1f}% of its weights with the * mask in the "
                 f"smallest network and {last * 100:.1f}% in the largest.", "",
                 "![sharing vs size](figures/sharing_vs_size.png)", ""]
    else:
        for size in dict.fromkeys(p["size"] for p in points):
            mine = [p for p in points if p["size"] == size]
            betas = [mean(p["beta"]) for p in mine]
            name = f"beta_{size}.png"
            plots.line_plot(figures / name, betas,
                            {"Full accuracy": [mean(p["full_accuracy"]) for p in mine],
                             **{k: [mean(p[v]) * 100 for p in mine] for k, v in metrics.items()}},
                            {"Full accuracy": [std(p["full_accuracy"]) for p in mine],
                             **{k: [std(p[v]) * 100 for p in mine] for k, v in metrics.items()}},
                            xlabel="beta", ylabel="[%]", title=f"Network {size}", logx=True)
            text += [f"![beta {size}](figures/{name})", ""]
    text += ["## Timings (seconds per seed, summed over the points)", "", timings_table(agg["timings"]), ""]
    return save_report(out, text)
