"""Report of the CIFAR-10 class-removal study (paper §2.6, figures 15-17, 20)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plots
from .study import (MARGIN, curves_section, half_mask_section, matrix_section, removal_modes_section, save_report,
                    strictest, sufficiency_gaps, units_section)
from .tables import fmt, mean, run_line, std, table, timings_section

PAPER_FINDING = ("The paper (poster): CNNs on CIFAR-10 rely heavily on class-exclusive weights; removing "
                 "them causes a large relative drop on the removed class while the largest relative drop "
                 "of any other class stays below about 10% of it, and the confusion changes reveal similar "
                 "classes (e.g. cat/dog, automobile/truck).")


def _matrix(rows) -> np.ndarray:
    return np.array([[mean(v) for v in row] for row in rows])


def _std(rows) -> np.ndarray:
    return np.array([[std(v) for v in row] for row in rows])


def model_name(config: dict) -> str:
    """'simple CNN' (with ' (no dropout)') or 'ResNet-<depth>'; runs made before the ResNet
    existed have no 'model' key and are CNN runs."""
    if config.get("model", "cnn") == "resnet":
        return f"ResNet-{6 * config['resnet_blocks'] + 2}"
    return f"simple CNN{'' if config['dropout'] else ' (no dropout)'}"


def control_sentence(removal: list[dict]) -> str:
    """The claim "class-exclusive weights matter more than random ones", against the random removals
    per tensor and pooled (where the run has it): it rests on the one that costs the class most."""
    own = np.mean([mean(r["target_drop"]) for r in removal])
    controls = {"per tensor": np.mean([mean(r["random_target_drop"]) for r in removal])}
    if "random_pooled_target_drop" in removal[0]:
        controls["pooled"] = np.mean([mean(r["random_pooled_target_drop"]) for r in removal])
    rests = strictest(controls, "more")
    return (f"Against the control: removing as many random weights of the reference mask as each class mask lacks "
            f"costs that class {' and '.join(f'{v:.1f}% {label}' for label, v in controls.items())} on average, "
            f"against {own:.1f}% for its class-exclusive weights: class-exclusive weights "
            + (f"matter far more than random ones (against the costlier, {rests} removal)."
               if own > 2 * controls[rests] + 5 else f"do not matter more than random ones ({rests} removal)."))


CURVES_INTRO = ("The reference mask and each class mask read as rankings of their logits (no extra training): the top "
                "d of a mask's weights kept (sufficiency) or removed (necessity), in every tensor but the output "
                "layer, which keeps the reference mask (as the class masks do), on the class's own evaluation "
                "examples and on the other classes' (its specificity), beside the pruning baselines computed on "
                "training images of the same classes. The mask without class k ranks the weights every other class "
                "needs: its top weights should carry the other classes but not class k.")


def curves_specificity(curves: dict, classes: list[str]) -> str:
    """Per class with curves, in words: how much more of the class the reference mask's top weights
    carry than the class mask's (without it), beside the same on the other classes. Class-exclusive
    weights show as a gap on the class that the other classes do not have."""
    parts = []
    for k, name in enumerate(classes):
        if name not in curves or f"{name}-others" not in curves:
            continue
        gaps = sufficiency_gaps(curves, ("reference", f"without-{k}"), (name, f"{name}-others"))
        if gaps is None:
            parts.append(f"for {name} the areas are undefined (the metric does not change from every weight kept "
                         f"to none)")
            continue
        gap, gap_others = gaps
        parts.append(f"the reference mask's top weights carry {name} {gap:+.2f} in sufficiency area beyond the mask "
                     f"without {name}, the other classes {gap_others:+.2f}: "
                     + (f"{name} needs weights the other classes' mask ranks low (class-exclusive weights)"
                        if gap > gap_others + MARGIN else f"no weights exclusive to {name} in this reading"))
    return ("Read as rankings: " + "; ".join(parts) + ".") if parts else ""


MODE_COLUMNS = {"target_drop": "relative drop", "random_target_drop": "random removal drop",
                "random_pooled_target_drop": "random pooled drop", "other_over_target": "largest other / target"}


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    classes = agg["classes"]
    removal = agg["removal"]
    plots.bar_groups(figures / "relative_drop.png", classes,
                     {"removed class": [mean(r["target_drop"]) for r in removal]},
                     {"removed class": [std(r["target_drop"]) for r in removal]},
                     ylabel="relative drop [%]", title="Accuracy drop of the removed class")
    plots.bar_groups(figures / "other_over_target.png", classes,
                     {"largest other / target": [mean(r["other_over_target"]) for r in removal]},
                     {"largest other / target": [std(r["other_over_target"]) for r in removal]},
                     ylabel="[%]", title="Largest relative drop of another class, as % of the removed class's")
    differences = {f"without {c}": _matrix(r["difference"]) for c, r in zip(classes, removal)}
    plots.confusion_grid(figures / "confusion_differences.png", differences, classes, classes,
                         title="Confusion change [% points] (rows: true class)", center_zero=True, fmt="{:.0f}")
    plots.confusion_grid(figures / "reference_confusion.png", {"reference": _matrix(agg["reference_confusion"])},
                         classes, classes, {"reference": _std(agg["reference_confusion"])}, fmt="{:.0f}")
    rows, pairs = [], []
    pooled = "random_pooled_target_drop" in removal[0]  # runs made before the pooled control lack it
    for k, (name, r) in enumerate(zip(classes, removal)):
        change = _matrix(r["difference"])[k]
        change[k] = -np.inf
        goes_to = classes[int(change.argmax())]
        pairs.append(f"{name} → {goes_to}")
        rows.append([name, fmt(r["target_drop"]), fmt(r.get("random_target_drop")),
                     *([fmt(r["random_pooled_target_drop"])] if pooled else []), fmt(r["other_over_target"]),
                     fmt(r["reference_kept"], 3), goes_to])
    evaluated = ("the official test set" if agg.get("evaluated_on") == "test"
                 else "the held-out 20% of the training images")
    text = [f"# CIFAR-10 class removal: {model_name(summary['config'])}", "",
            f"{run_line(summary)}; pretraining "
            f"{summary['config']['pretrain_steps']} steps, {summary['config']['mask']['steps']} steps per mask; "
            f"evaluated on {evaluated}.", "",
            "## Finding", "", PAPER_FINDING, "",
            f"Measured: mean relative drop of the removed class {np.mean([mean(r['target_drop']) for r in removal]):.1f}%; "
            f"largest other-class drop {np.mean([mean(r['other_over_target']) for r in removal]):.1f}% of it on average. "
            f"Where the removed class's examples go: {', '.join(pairs)}.", "",
            *([control_sentence(removal), ""] if "random_target_drop" in removal[0] else []),
            *([curves_specificity(agg["curves"], classes), ""] if "curves" in agg else []),
            table(["removed class", "relative drop [%]", "random removal drop [%]",
                   *(["random pooled removal drop [%]"] if pooled else []), "largest other / target [%]",
                   "reference weights kept", "examples mostly become"], rows), "",
            "Random removal: the reference mask with as many of its weights removed at random as the class mask "
            "lacks of it, in every tensor (per tensor) or in total over its tensors (pooled: a small tensor such as "
            "a bias may lose more of its weights); means over the draws. The claim that class-exclusive weights "
            "matter more than random ones rests on the costlier.", "",
            *(["## Class removal in both removal modes [%]", "",
               "Each drop against the reference mask in the same mode; random: the controls above.", "",
               removal_modes_section(agg["removal_modes"], MODE_COLUMNS, unit="relative drops [%]"), ""]
              if "removal_modes" in agg else []),
            *(["## Curves over density", "", CURVES_INTRO, "",
               curves_section(agg["curves"], {c: f"{c}" for c in classes}
                              | {f"{c}-others": f"the classes other than {c}" for c in classes}, figures,
                              labels={"mask reference": "reference mask"}
                              | {f"mask without-{k}": f"mask without {c}" for k, c in enumerate(classes)}), ""]
              if "curves" in agg else []),
            "![relative drop](figures/relative_drop.png) ![other over target](figures/other_over_target.png)", "",
            "## Confusion changes", "", "![differences](figures/confusion_differences.png)", "",
            "![reference](figures/reference_confusion.png)", "",
            *(["## Overlap of the class-removed masks", "", matrix_section(agg["overlap"], figures, out), ""]
              if agg.get("overlap") else []),
            *(["## Units of the class-removed masks", "", units_section(agg["units"], figures, out,
                                                                  seeds=[s["units"] for s in summary["per_seed"]]), ""]
              if agg.get("units") else []),
            "## Mask stability", "",
            f"IoU of two masks trained with different seeds on {' and '.join(agg['stability_classes'])}: "
            f"{fmt(agg['stability_iou'], 3)}"
            + (f", against {mean(agg['stability_iou_chance']):.3f} for random masks with the same number of weights "
               f"in every tensor: the seeds find the same weights "
               + ("more often than chance." if mean(agg["stability_iou"]) > 1.2 * mean(agg["stability_iou_chance"])
                  else "no more often than chance.")
               if "stability_iou_chance" in agg else "."), "",
            "## Half-mask test (reference mask)", "", half_mask_section(agg["half_mask"], figures), "",
            *timings_section(agg["timings"])]
    return save_report(out, text)
