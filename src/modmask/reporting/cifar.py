"""Report of the CIFAR-10 class-removal study (paper §2.6, figures 15-17, 20)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plots
from .study import half_mask_section, matrix_section, save_report
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
    own = np.mean([mean(r["target_drop"]) for r in removal])
    control = np.mean([mean(r["random_target_drop"]) for r in removal])
    return (f"Against the control: removing as many random weights of the reference mask (per layer) as each "
            f"class mask lacks costs that class {control:.1f}% on average, against {own:.1f}% for its "
            f"class-exclusive weights: class-exclusive weights "
            + ("matter far more than random ones." if own > 2 * control + 5 else "do not matter more than random ones."))


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
    for k, (name, r) in enumerate(zip(classes, removal)):
        change = _matrix(r["difference"])[k]
        change[k] = -np.inf
        goes_to = classes[int(change.argmax())]
        pairs.append(f"{name} → {goes_to}")
        rows.append([name, fmt(r["target_drop"]), fmt(r.get("random_target_drop")), fmt(r["other_over_target"]),
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
            table(["removed class", "relative drop [%]", "random removal drop [%]", "largest other / target [%]",
                   "reference weights kept", "examples mostly become"], rows), "",
            "![relative drop](figures/relative_drop.png) ![other over target](figures/other_over_target.png)", "",
            "## Confusion changes", "", "![differences](figures/confusion_differences.png)", "",
            "![reference](figures/reference_confusion.png)", "",
            *(["## Overlap of the class-removed masks", "", matrix_section(agg["overlap"], figures, out), ""]
              if agg.get("overlap") else []),
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
