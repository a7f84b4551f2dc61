"""Report of the double-addition study (paper §2.2, figures 5, 6, 11) with the copy-weight control."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .study import (costs_text, curves_section, half_mask_section, histogram_figure, overlap_section, removal_costs,
                    removal_modes_section, save_report, versus_random)
from .tables import fmt, mean, run_line, std, table, timings_section

CONDITIONS = ["Full", "Pair 1", "¬Pair 1", "Pair 2", "¬Pair 2"]
# random removal per tensor and pooled beside each inverse mask (runs made before the pooled control lack it)
CONTROLLED = ["Full", "Pair 1", "random Pair 1", "¬Pair 1", "random ¬Pair 1", "random pooled ¬Pair 1", "Pair 2",
              "random Pair 2", "¬Pair 2", "random ¬Pair 2", "random pooled ¬Pair 2"]
PAIRS = ("pair 1", "pair 2")
CURVE_TITLES = {"pair1": "pair 1", "pair2": "pair 2"}
CURVE_LABELS = {"mask pair1": "Pair 1 mask", "mask pair2": "Pair 2 mask"}
CURVES_INTRO = ("Each pair mask read as a ranking of its logits (no extra training): the top d of its weights kept "
                "(sufficiency) or removed (necessity), on each pair, beside the pruning baselines and random weights "
                "at the same densities. Without reuse, a pair's own mask ranks the weights that pair needs above "
                "every baseline, and the other pair's mask ranks few of them (low areas on the other pair).")
PAPER_FINDING = ("The paper (poster, P_reuse): \"there is no reuse\": the Pair 1 and Pair 2 masks overlap "
                 "little in most layers, and removing the Pair 1 mask leaves pair 2 mostly intact. When "
                 "pair 1's input and output weights are copies of pair 2's (the control), perfect reuse "
                 "is possible and the masks may overlap much more.")


def _accuracy_section(acc: dict, figure: Path, title: str) -> str:
    conditions = [c for c in CONTROLLED if c in acc] if "random ¬Pair 1" in acc else CONDITIONS
    plots.bar_groups(figure, conditions, {p: [mean(acc[c][p]) for c in conditions] for p in PAIRS},
                     {p: [std(acc[c][p]) for c in conditions] for p in PAIRS},
                     ylabel="accuracy [%]", title=title, ylim=(0, 100))
    rows = [[p] + [fmt(acc[c][p]) for c in conditions] for p in PAIRS]
    legend = ("\n\n`random Pair i`: random weights with the mask's count in every layer kept instead of it; "
              "`random ¬Pair i`: as many random weights removed instead of its in every layer, `random pooled ¬Pair i`: "
              "as many in total over the layers the inverse removes it from (means over the draws)."
              if conditions is not CONDITIONS else "")
    return (table(["pair", *conditions], rows) + legend
            + f"\n\n![{figure.stem}]({figure.parent.name}/{figure.name})")


def _iou_total(masks: dict) -> dict:
    return masks["overlap"]["pair1|pair2"][-1]["iou"]


def finding(agg: dict) -> str:
    acc = agg["accuracy"]
    iou = mean(_iou_total(agg["masks"]))
    own = mean(acc["Full"]["pair 1"]) - mean(acc["¬Pair 1"]["pair 1"])
    other = mean(acc["Full"]["pair 2"]) - mean(acc["¬Pair 1"]["pair 2"])
    text = (f"Measured: the Pair 1 and Pair 2 masks have a total IoU of {iou:.3f}. Removing the Pair 1 "
            f"mask costs pair 1 {own:.1f} points and pair 2 {other:.1f} points.")
    total = agg["masks"]["overlap"]["pair1|pair2"][-1]
    if "iou_chance" in total:
        ratio = iou / max(mean(total["iou_chance"]), 1e-12)
        text += (f" Random masks of the same per-layer sizes would overlap with IoU {mean(total['iou_chance']):.3f}: "
                 f"the pair masks share {ratio:.1f}x what chance gives"
                 + (" - no more than chance, so no reuse is seen." if ratio < 1.2 else "."))
    if "random ¬Pair 1" in acc:
        costs = removal_costs(acc, "¬Pair 1", "pair 1")
        verdict, rests = versus_random(own, costs, 10)
        text += (f" Removing as many random weights as the Pair 1 mask has costs pair 1 {costs_text(costs)}: "
                 f"the Pair 1 mask's own effect "
                 + (f"holds against random removal (against the costlier, {rests})." if verdict == "more" else
                    "does not hold against random removal."))
        # the claim "removing Pair 1 leaves pair 2 mostly intact", against the same random removals
        costs = removal_costs(acc, "¬Pair 1", "pair 2")
        verdict, rests = versus_random(other, costs, 10)
        text += (f" The same random removals cost pair 2 {costs_text(costs)} points against the Pair 1 mask's "
                 f"{other:.1f}: removing the Pair 1 mask "
                 + (f"spares pair 2 far more than removing random weights does (even the cheaper, {rests}), so pair 2 "
                    f"does not rely on the Pair 1 mask's weights: the masks are functionally separate."
                    if verdict == "less" else
                    f"hurts pair 2 much more than removing random weights does (even the costlier, {rests}), so pair 2 "
                    f"needs weights of the Pair 1 mask: the masks are not functionally separate."
                    if verdict == "more" else
                    "costs pair 2 about what removing random weights does: the removal says nothing about "
                    "separation beyond the number of weights."))
    if "control" in agg:
        control_iou = mean(_iou_total(agg["control"]["masks"]))
        text += (f" In the copy-weight control the IoU is {control_iou:.3f} "
                 f"({'higher' if control_iou > iou else 'not higher'} than without the copies), so the method "
                 f"{'does' if control_iou > iou else 'does not'} detect reuse where reuse is possible.")
    return text


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    config = summary["config"]
    model = (f"FNN {'x'.join(str(h) for h in config['hidden'])}" if config["model"] == "fnn"
             else f"LSTM 2x{config['lstm_hidden']} ({config['lstm_mode']})")
    text = [
        f"# Double addition: {model}", "",
        f"{run_line(summary)}; pretraining "
        f"{config['pretrain_steps']} steps, {config['mask']['steps']} steps per mask, k {config['mask']['k']}.", "",
        "## Finding", "", PAPER_FINDING, "", finding(agg), "",
        "## Per-pair accuracy under each mask [%]", "",
        _accuracy_section(agg["accuracy"], figures / "accuracy.png", "Per-pair accuracy"), "",
        *(["### Per-pair accuracy in both removal modes [%]", "", removal_modes_section(agg["removal_modes"]), ""]
          if "removal_modes" in agg else []),
        *(["### Curves over density", "", CURVES_INTRO, "",
           curves_section(agg["curves"], CURVE_TITLES, figures, labels=CURVE_LABELS), ""] if "curves" in agg else []),
        f"With the input and output layers ({', '.join(agg['io_layers'])}) kept from the Full mask in the "
        "inverse masks (the paper's second variant):", "",
        _accuracy_section(agg["accuracy_io_from_full"], figures / "accuracy_io_from_full.png",
                          "Per-pair accuracy, I/O layers from the Full mask"), "",
        *(["### Curves over density, hidden layers only", "",
           "The same curves with the weights chosen among the hidden layers only, the input and output layers "
           "kept as the Full mask keeps them:", "",
           curves_section(agg["curves_io_from_full"], CURVE_TITLES, figures, name="curves_io_from_full",
                          labels=CURVE_LABELS), ""] if "curves_io_from_full" in agg else []),
        "## Overlap of the Pair 1 and Pair 2 masks", "", overlap_section(agg["masks"], figures, seeds=[s["masks"] for s in summary["per_seed"]]), "",
    ]
    if "control" in agg:
        control_dir = figures / "control"
        text += ["## Copy-weight control", "",
                 "Pair 1's input columns and output rows were overwritten with pair 2's before masking.", "",
                 _accuracy_section(agg["control"]["accuracy"], figures / "control_accuracy.png",
                                   "Per-pair accuracy, copy-weight control"), "",
                 overlap_section(agg["control"]["masks"], control_dir, out), ""]
    text += ["## Half-mask test (Full mask)", "", half_mask_section(agg["half_mask"], figures), "",
             "## Mask probabilities", "", histogram_figure(agg["masks"], figures / "histogram.png"), "",
             *timings_section(agg["timings"])]
    return save_report(out, text)
