"""Report of the DeepMind Mathematics study (paper §2.5, the dm_math figure)."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .study import MARGIN, curves_section, removal_modes_section, save_report, sufficiency_gaps, units_section
from .tables import fmt, mean, run_line, std, table, timings_section

BARS = {"pretrained": "train (no mask)", "control": "control (mask on all train data)",
        "easy": "mask trained on train-easy"}
PAPER_FINDING = ("The paper: on every module the mask trained on the easy split does much worse on the hard "
                 "test set than the control mask trained on all the data, although the pretrained network "
                 "(and the control mask) solve many hard problems: the weights that handle easy problems "
                 "are not a general algorithm that also covers the hard ones.")


CURVE_TITLES = {"hard": "the hard test set", "easy": "the easy test set"}
CURVE_LABELS = {"mask control": "control mask", "mask easy": "easy-trained mask"}
CURVES_INTRO = ("Both masks read as rankings of their logits (no extra training): the top d of a mask's weights kept "
                "(sufficiency) or removed (necessity), on the hard and the easy test set (those the run's curve "
                "settings select), beside the pruning baselines computed on training problems of the same "
                "difficulty. The paper's claim is one of sufficiency: the easy-trained mask's top weights should "
                "carry the hard test set far less than the control mask's, more so than the easy test set.")


def curves_gap(module: str, curves: dict) -> str:
    """For one module, in words: how much more of the hard test set the control mask's top weights
    carry than the easy-trained mask's, beside the same on the easy test set where the run has it."""
    if "hard" not in curves:
        return ""
    if "easy" not in curves:
        areas = [mean(curves["hard"]["methods"][f"mask {m}"]["sufficiency_area"]) for m in ("control", "easy")]
        return ("" if None in areas else f"{module}, read as rankings: on the hard test set the control mask's top "
                f"weights reach sufficiency area {areas[0]:.2f}, the easy-trained mask's {areas[1]:.2f}.")
    gaps = sufficiency_gaps(curves, ("control", "easy"), ("hard", "easy"))
    if gaps is None:
        return (f"{module}, read as rankings: the areas are undefined (the metric does not change from every weight "
                f"kept to none).")
    return (f"{module}, read as rankings: the control mask's top weights carry the hard test set {gaps[0]:+.2f} in "
            f"sufficiency area beyond the easy-trained mask's, the easy test set {gaps[1]:+.2f}: "
            + ("hard problems need weights the easy-trained mask ranks low." if gaps[0] > gaps[1] + MARGIN else
               "no weights specific to hard problems in this reading."))


def write_report(out: Path, summary: dict) -> Path:
    modules = summary["aggregate"]["modules"]
    names = list(modules)
    series = {label: [mean(modules[m]["accuracy"][key]["hard"]) for m in names] for key, label in BARS.items()}
    errors = {label: [std(modules[m]["accuracy"][key]["hard"]) for m in names] for key, label in BARS.items()}
    short = [m.split("__", 1)[-1] for m in names]
    plots.bar_groups(out / "figures" / "accuracy_hard.png", short, series, errors,
                     ylabel="accuracy on test_hard [%]", title="DeepMind Mathematics", ylim=(0, 100))
    config = summary["config"]
    rows = []
    for m in names:
        acc = modules[m]["accuracy"]
        rows.append([m] + [f"{fmt(acc[key]['hard'])} ({fmt(acc[key]['easy'])})" for key in BARS]
                    + [fmt(modules[m]["densities"]["control"], 3), fmt(modules[m]["densities"]["easy"], 3)])
    source = config["data"] or (f"generated with DeepMind's generator, {config['generate_train']} examples per "
                                f"train difficulty")
    text = [f"# DeepMind Mathematics: {config['model']} encoder-decoder", "",
            f"{run_line(summary)}. Data: {source}.",
            "", "## Finding", "", PAPER_FINDING, "",
            "Measured, on the hard test set: " + "; ".join(
                f"{m}: control {mean(modules[m]['accuracy']['control']['hard']):.1f}%, easy-trained mask "
                f"{mean(modules[m]['accuracy']['easy']['hard']):.1f}%" for m in names) + ".", "",
            *(line for m in names if modules[m].get("curves") for line in (curves_gap(m, modules[m]["curves"]), "")),
            "## Accuracy on the hard test set (easy test set in brackets) [%]", "",
            table(["module", *BARS.values(), "control density", "easy density"], rows), "",
            "![accuracy](figures/accuracy_hard.png)", ""]
    moded = [m for m in names if modules[m].get("removal_modes")]  # modules evaluated before it have none
    if moded:
        text += ["## Accuracy in both removal modes [%]", "",
                 *(line for m in moded for line in (f"### {m}", "", removal_modes_section(
                     modules[m]["removal_modes"], {"hard": "hard test", "easy": "easy test"}), ""))]
    overlaps = {m: modules[m]["overlap"] for m in names if modules[m].get("overlap")}
    if overlaps:
        text += ["## Overlap of the control and easy-trained masks", "",
                 "IoU beside the chance level of random masks with the same number of weights per tensor; "
                 "z: standard deviations of the intersection above chance.", "",
                 table(["module", "IoU", "chance IoU", "IoMin", "chance IoMin", "z"],
                       [[m, fmt(o["iou"], 3), fmt(o["iou_chance"], 3), fmt(o["iomin"], 3), fmt(o["iomin_chance"], 3),
                         fmt(o["z"], 1)] for m, o in overlaps.items()]), ""]
    curved = [m for m in names if modules[m].get("curves")]
    if curved:
        text += ["## Curves over density", "", CURVES_INTRO, "",
                 *(line for m in curved for line in (
                     f"### {m}", "", curves_section(modules[m]["curves"], CURVE_TITLES, out / "figures",
                                                    name=f"curves_{m.split('__', 1)[-1]}", labels=CURVE_LABELS), ""))]
    for m in (m for m in names if modules[m].get("units")):
        text += [f"## Units, {m}", "", units_section(modules[m]["units"], out / "figures", out,
                                                    name=f"{m.split('__', 1)[-1]}_",
                                                    seeds=[s["modules"][m]["units"] for s in summary["per_seed"]]), ""]
    for m in names:
        text += timings_section(modules[m]["timings"], f"# Timings, {m} (seconds per seed)")
    return save_report(out, text)
