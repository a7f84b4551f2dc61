"""Report of the sharing sweeps (paper §2.9, figures 8 and 9)."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .addmul import CURVE_LABELS
from .study import curves_section, removal_modes_section, save_report
from .tables import fmt, mean, run_line, std, table, timings_section

SHARING = {"shared (+ mask)": "shared_add", "shared (* mask)": "shared_mul", "IoU": "iou"}

PAPER_FINDING = {
    "size": "The paper: larger FNNs share a smaller fraction of weights between the + and * masks.",
    "beta": "The paper: the total shared fraction stays roughly between 25% and 55% across beta, while "
            "the Full mask's accuracy falls once beta is too large (its figure stars beta = 1e-4).",
}


def sharing_plot(path: Path, xs: list, points: list[dict], *, xlabel: str, title: str, logx: bool = False,
                 accuracy: bool = False) -> None:
    """Figures 8 and 9: the shared fractions and IoU of the + and * masks [%] (mean ± std over
    seeds) per point; points hold shared_add, shared_mul, iou (and full_accuracy [%] when drawn)."""
    series = {"Full accuracy": "full_accuracy"} if accuracy else {}
    series.update(SHARING)
    scale = {name: 1 if key == "full_accuracy" else 100 for name, key in series.items()}
    plots.line_plot(path, xs, {name: [mean(p[key]) * scale[name] for p in points] for name, key in series.items()},
                    {name: [std(p[key]) * scale[name] for p in points] for name, key in series.items()},
                    xlabel=xlabel, ylabel="[%]", title=title, logx=logx)


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    points = agg["points"]
    sweep = agg["sweep"]
    chance = all("iou_chance" in p for p in points)  # runs of modmask 0.1 have no chance levels
    rows = [[p["size"], fmt(p["beta"], 6) if not isinstance(p["beta"], dict) else f"{mean(p['beta']):g}",
             fmt(p["weights_add"], 0), fmt(p["weights_mul"], 0), fmt(p["shared_add"], 3), fmt(p["shared_mul"], 3),
             fmt(p["iou"], 3)] + ([fmt(p["shared_add_chance"], 3), fmt(p["iou_chance"], 3)] if chance else [])
            + [fmt(p["full_accuracy"])] for p in points]
    headers = ["network", "beta", "weights +", "weights *", "shared +", "shared *", "IoU",
               *(["chance shared +", "chance IoU"] if chance else []), "Full acc. [%]"]
    text = [f"# Weight sharing of the + and * masks against {sweep}", "",
            f"{run_line(summary)}.", "",
            "## Finding", "", PAPER_FINDING[sweep], "",
            table(headers, rows), "",
            *(["Chance: random masks with the same number of weights in every layer (the + mask's share of "
               "them inside a random * mask, and their IoU)."] if chance else []), ""]
    if sweep == "size":
        sharing_plot(figures / "sharing_vs_size.png", [p["size"] for p in points], points, xlabel="network",
                     title="Sharing between the + and * masks")
        first, last = mean(points[0]["shared_add"]), mean(points[-1]["shared_add"])
        text += [f"Measured: the + mask shares {first * 100:.1f}% of its weights with the * mask in the "
                 f"smallest network and {last * 100:.1f}% in the largest"
                 + (f" (random masks of their sizes: {mean(points[0]['shared_add_chance']) * 100:.1f}% and "
                    f"{mean(points[-1]['shared_add_chance']) * 100:.1f}%)." if chance else "."), "",
                 "![sharing vs size](figures/sharing_vs_size.png)", ""]
    else:
        for size in dict.fromkeys(p["size"] for p in points):
            mine = [p for p in points if p["size"] == size]
            name = f"beta_{size}.png"
            sharing_plot(figures / name, [mean(p["beta"]) for p in mine], mine, xlabel="beta",
                         title=f"Network {size}", logx=True, accuracy=True)
            text += [f"![beta {size}](figures/{name})", ""]
    if any("removal_modes" in p for p in points):
        text += ["## Accuracy in both removal modes, per point [%]", ""]
        for p in points:
            if "removal_modes" in p:
                text += [f"### Network {p['size']}, beta {mean(p['beta']):g}", "",
                         removal_modes_section(p["removal_modes"]), ""]
    if any("curves" in p for p in points):
        text += ["## Curves over density, per point", "",
                 "Each point's masks read as rankings of their logits (no extra training), on addition and on "
                 "multiplication, beside the pruning baselines, as in the add/mul report.", ""]
        for index, p in enumerate(points):
            text += [f"### Network {p['size']}, beta {mean(p['beta']):g}", "",
                     curves_section(p["curves"], {"add": "addition", "mul": "multiplication"}, figures,
                                    name=f"curves_point{index}", labels=CURVE_LABELS), ""]
    text += timings_section(agg["timings"], "Timings (seconds per seed, summed over the points)")
    return save_report(out, text)
