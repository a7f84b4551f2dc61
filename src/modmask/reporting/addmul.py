"""Report of the addition/multiplication study (paper §2.1, figures 1-4, 10, 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.training import TrainedMask
from . import plots
from .study import (costs_text, curves_section, half_mask_section, histogram_figure, overlap_section, removal_costs,
                    removal_modes_section, save_report, versus_random)
from .tables import fmt, mean, run_line, std, table, timings_section

CONDITIONS = ["Full", "+", "¬+", "*", "¬*"]
# with the random controls (runs/study.removal_controls) beside each mask and inverse mask: random
# removal per tensor and pooled (runs made before the pooled control lack its columns)
CONTROLLED = ["Full", "+", "random +", "¬+", "random ¬+", "random pooled ¬+", "*", "random *", "¬*", "random ¬*",
              "random pooled ¬*"]
CURVE_LABELS = {"mask full": "Full mask", "mask add": "+ mask", "mask mul": "* mask"}
CURVES_INTRO = ("Each mask read as a ranking of its logits (no extra training): the top d of its weights kept "
                "(sufficiency) or removed (necessity), on the add and the mul validation sets, beside the pruning "
                "baselines and random weights at the same densities. A mask's own operation should need its top "
                "weights more than any baseline's; its curve on the other operation is its specificity (low areas: "
                "the other operation does not run on them). The single inverse mask above is one point of such a "
                "curve, where random removal of its size may already destroy an operation.")
PAPER_FINDING = ("The paper (poster, P_specialize): \"there is some separation, but it is not perfect\": "
                 "removing the weights of the + mask (¬+) destroys addition while multiplication stays "
                 "largely intact, and vice versa; the + and * masks still share part of their weights.")


def _drop(acc: dict, condition: str, op: str) -> float:
    return mean(acc["Full"][op]) - mean(acc[condition][op])


def against_controls(acc: dict, overlap_total: dict) -> str:
    """Whether the finding holds against the references: random removal of as many weights per
    tensor and pooled over the tensors (each claim resting on the control hardest for it), and the
    chance overlap of random masks with the masks' per-layer counts."""
    parts = []
    if "random ¬+" in acc:
        for op, name in (("+", "addition"), ("*", "multiplication")):
            own, costs = _drop(acc, f"¬{op}", op), removal_costs(acc, f"¬{op}", op)
            verdict, rests = versus_random(own, costs, 10)
            parts.append(f"Removing the {op} mask costs {name} {own:.1f} points; removing as many random weights "
                         f"costs it {costs_text(costs)}: the effect "
                         + (f"holds against random removal (against the costlier, {rests})." if verdict == "more" else
                            "does not hold against random removal."))
        for op, other, name in (("+", "*", "multiplication"), ("*", "+", "addition")):
            # "the other operation stays intact": compared with the same random removals
            cost, costs = _drop(acc, f"¬{op}", other), removal_costs(acc, f"¬{op}", other)
            verdict, rests = versus_random(cost, costs, 10)
            parts.append(f"The {op} mask's removal costs {name} {cost:.1f} points, random removal "
                         f"{costs_text(costs)}: "
                         + (f"{name} needs the {op} mask's weights more than random ones (against the costlier, "
                            f"{rests})." if verdict == "more" else
                            f"{name} survives it better than random removal (even the cheaper, {rests}): it does not "
                            f"rely on the {op} mask's weights." if verdict == "less" else
                            f"about what removing random weights costs, so {name} does not need the {op} mask's "
                            f"weights beyond their number."))
    if "iou_chance" in overlap_total:
        ratio = mean(overlap_total["iou"]) / max(mean(overlap_total["iou_chance"]), 1e-12)
        parts.append(f"The + and * masks overlap with IoU {mean(overlap_total['iou']):.3f} against "
                     f"{mean(overlap_total['iou_chance']):.3f} for random masks of the same per-layer sizes "
                     f"({ratio:.1f}x chance, z = {mean(overlap_total['z']):.1f}): the shared weights are "
                     + ("more than chance would give." if ratio > 1.2 else "no more than chance would give."))
    return " ".join(parts)


def finding(acc: dict, overlap_total: dict) -> str:
    """The measured counterpart of the paper's finding, in words, from the accuracy table and the
    pooled overlap of the + and * masks, with the controls where the run has them."""
    own_add, other_add = _drop(acc, "¬+", "+"), _drop(acc, "¬+", "*")
    own_mul, other_mul = _drop(acc, "¬*", "*"), _drop(acc, "¬*", "+")
    specialised = own_add > 2 * max(other_add, 1.0) and own_mul > 2 * max(other_mul, 1.0)
    return (f"Measured: the + mask alone computes addition at {mean(acc['+']['+']):.1f}% and multiplication at "
            f"{mean(acc['+']['*']):.1f}%; the * mask alone multiplication at {mean(acc['*']['*']):.1f}% and "
            f"addition at {mean(acc['*']['+']):.1f}%. The masks overlap with IoU {mean(overlap_total['iou']):.3f} "
            f"and IoMin {mean(overlap_total['iomin']):.3f} (the share of the smaller mask inside the larger). "
            f"Removing the + mask costs addition {own_add:.1f} points and multiplication {other_add:.1f}; "
            f"removing the * mask costs multiplication {own_mul:.1f} points and addition {other_mul:.1f}. "
            + ("Each inverse mask hurts its own operation much more than the other: the network specialises."
               if specialised else
               "Each inverse mask also destroys the other operation: the weights the two operations share "
               "(a large IoMin) are needed by both, so the separation is partial.")
            + (" " + against_controls(acc, overlap_total) if "random ¬+" in acc or "iou_chance" in overlap_total
               else ""))


def mask_pictures(out: Path, figures: Path) -> list[str]:
    """The paper's mask visualisation (figure 7) of seed 0's masks, one picture per weight matrix:
    red = only +, green = only *, blue = both, black = neither, grey = in the Full mask only."""
    masks = out / "seed-0" / "masks"
    if not all((masks / f"{n}.safetensors").exists() for n in ("full", "add", "mul")):
        return []
    full, add, mul = (TrainedMask.load(masks / f"{n}.safetensors").masks for n in ("full", "add", "mul"))
    lines = []
    for name in add:
        if add[name].dim() != 2:
            continue
        path = figures / f"masks_{name.replace('.', '_')}.png"
        plots.mask_image(path, {"+": add[name].numpy(), "*": mul[name].numpy()}, full[name].numpy(),
                         title=f"{name} (seed 0)")
        lines.append(f"![{name}](figures/{path.name})")
    return lines


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    acc = agg["accuracy"]
    config = summary["config"]

    conditions = [c for c in CONTROLLED if c in acc] if "random ¬+" in acc else CONDITIONS
    plots.bar_groups(figures / "accuracy.png", conditions,
                     {op: [mean(acc[c][op]) for c in conditions] for op in ("+", "*")},
                     {op: [std(acc[c][op]) for c in conditions] for op in ("+", "*")},
                     ylabel="accuracy [%]", title="Accuracy on the add and mul validation sets", ylim=(0, 100))
    accuracy_rows = [[op] + [fmt(acc[c][op]) for c in conditions] for op in ("+", "*")]

    confusion = agg["confusion"]
    labels = ["Full", "+", "*", "¬Full", "¬+", "¬*"]
    plots.confusion_grid(figures / "confusion.png",
                         {k: np.array([[mean(v) for v in row] for row in confusion[k]]) for k in labels},
                         ["+", "*"], ["+ result", "* result", "neither"],
                         {k: np.array([[std(v) for v in row] for row in confusion[k]]) for k in labels},
                         title="Which operation the prediction matches [%]")

    model = (f"FNN {'x'.join(str(h) for h in config['hidden'])}" if config["model"] == "fnn"
             else f"LSTM 2x{config['lstm_hidden']}")
    text = [
        f"# Addition / multiplication: {model}", "",
        f"{run_line(summary)}; pretraining "
        f"{config['pretrain_steps']} steps, {config['mask']['steps']} steps per mask, beta {config['mask']['beta']}, "
        f"k {config['mask']['k']}.", "",
        "## Finding", "", PAPER_FINDING, "", finding(acc, agg["masks"]["overlap"]["add|mul"][-1]), "",
        "## Accuracy under each mask [%]", "",
        table(["validation set", *conditions], accuracy_rows), "",
        *([f"`random X`: a random mask with X's weight count in every layer kept instead of X; `random ¬X`: as "
           f"many random weights removed instead of X's in every layer; `random pooled ¬X`: as many in total, drawn "
           f"over all the masked layers (a small, fragile layer may lose more or fewer of them); mean over "
           f"{summary['per_seed'][0].get('random_draws')} draws (the table's ± is over seeds). A claim that removing "
           f"a mask costs more than random removal rests on the costlier control, one that it costs less on the "
           f"cheaper.", ""] if conditions is not CONDITIONS else []),
        "![accuracy](figures/accuracy.png)", "",
        f"Without any mask: + {fmt(acc['No mask']['+'])}, * {fmt(acc['No mask']['*'])}.", "",
        *(["## Accuracy in both removal modes [%]", "", removal_modes_section(agg["removal_modes"]), ""]
          if "removal_modes" in agg else []),
        *(["## Curves over density", "", CURVES_INTRO, "",
           curves_section(agg["curves"], {"add": "addition", "mul": "multiplication"}, figures, labels=CURVE_LABELS),
           ""] if "curves" in agg else []),
        "## Weights of the + and * masks per layer", "",
        overlap_section({**agg["masks"], "shared_fraction": agg["masks"]["shared_fraction"]}, figures,
                        seeds=[s["masks"] for s in summary["per_seed"]]), "",
        "### The masks as pictures", "",
        "Red: only +, green: only *, blue: both, black: neither, grey: only in the Full mask.", "",
        *mask_pictures(out, figures), "",
        "## Operation confusion", "",
        "Rows: the true operation; columns: the prediction equals the + result, the * result, or neither "
        "(an example whose results coincide counts in both). Under ¬+ additions should turn into "
        "'neither' while multiplications stay.", "",
        "![confusion](figures/confusion.png)", "",
        "## Half-mask test (Full mask)", "", half_mask_section(agg["half_mask"], figures), "",
        "## Mask probabilities", "", histogram_figure(agg["masks"], figures / "histogram.png"), "",
        *timings_section(agg["timings"]),
    ]
    return save_report(out, text)
