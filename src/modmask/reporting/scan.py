"""Report of the SCAN study (paper §2.3, §2.4, figures 12-14) for either model."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .study import (MARGIN, curves_section, matrix_section, removal_modes_section, save_report, sufficiency_gaps, units_section,
                    versus_random)
from .tables import fmt, mean, run_line, std, table, timings_section

SPLITS = ("simple", "jump", "length", "turn_left")
SHOWN = ("turn_left", "jump", "length")
PAPER_FINDING = ("The paper (poster): a network pretrained on all of SCAN performs well on all splits, yet "
                 "masks trained on a specific split find split-specific weights: on jump and length the "
                 "split's own mask does much worse than the full-problem mask (near the from-scratch "
                 "baseline), while turn_left stays high. In the decoder's output layer the jump mask "
                 "removes most of the weights of I_JUMP.")


def against_control(acc: dict, control: dict, pooled: dict | None = None, what: str = "weights") -> str:
    """One sentence per split: is the split mask worse on its split than the full-problem mask with
    as many random weights removed (per tensor, and pooled over the tensors where the run has it)?
    The claim "the weights it lacks are split-specific" rests on the random removal that costs most.
    what: what the controls draw ('weights'; 'units' for unit masks)."""
    parts = []
    for split, value in control.items():
        own, full = mean(acc[split][split]), mean(acc["simple"][split])
        controls = {"per tensor": mean(value), **({"pooled": mean(pooled[split])} if pooled else {})}
        verdict, rests = versus_random(full - own, {label: full - v for label, v in controls.items()}, 10)
        parts.append(f"on {split} the {split} mask reaches {own:.1f}% against {full:.1f}% for the full-problem mask "
                     f"and {' and '.join(f'{v:.1f}% {label}' for label, v in controls.items())} for it with as many "
                     f"random {what} removed, "
                     + (f"so the weights it lacks are split-specific (against the costlier, {rests})" if verdict == "more"
                        else f"better than the control (even the cheaper, {rests}): it keeps what its split needs and "
                             f"lacks only weights the split can do without" if verdict == "less"
                        else f"so what it lacks matters no more than as many random {what} of the full-problem mask"))
    return "Against the random control: " + "; ".join(parts) + "."


CURVE_TITLES = {"jump": "the jump test set", "length": "the length test set", "turn_left": "the turn_left test set",
                "iid": "the IID test set (simple split)"}
CURVE_LABELS = {"mask simple": "full-problem mask", **{f"mask {s}": f"{s} mask" for s in SPLITS[1:]}}
CURVES_INTRO = ("The masks read as rankings of their logits (no extra training): the top d of a mask's weights kept "
                "(sufficiency) or removed (necessity). On each split's test set, the split mask's and the "
                "full-problem mask's; on the IID test set, every mask's; beside the pruning baselines computed on the "
                "same test set's other examples. The paper's figure 4 compares the two masks' accuracy on a split's "
                "test set, a question of sufficiency: where the full-problem mask's top weights carry the split's "
                "test set and the split mask's do not, the test set needs weights the split's training data did not "
                "select; on the IID test set both should carry the function alike.")


def curves_gap(curves: dict) -> str:
    """Per split, in words: how much more of the split's test set the full-problem mask's top weights
    carry than the split mask's (the difference of their sufficiency areas), beside the same on the IID
    test set; split-specific weights show as a gap on the split that the IID test set does not have."""
    parts = []
    for split in (s for s in SHOWN if s in curves and "iid" in curves):
        gaps = sufficiency_gaps(curves, ("simple", split), (split, "iid"))
        if gaps is None:
            parts.append(f"on {split} the areas are undefined (the metric does not change from every weight kept to "
                         f"none, on the split's or the IID test set)")
            continue
        gap, gap_iid = gaps
        parts.append(f"the full-problem mask's top weights carry the {split} test set {gap:+.2f} in sufficiency area "
                     f"beyond the {split} mask's, the IID test set {gap_iid:+.2f}: "
                     + ("the split's test set needs weights its mask ranks low (split-specific weights)"
                        if gap > gap_iid + MARGIN else "no split-specific weights in this reading"))
    return ("Read as rankings: " + "; ".join(parts) + ".") if parts else ""


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    acc = agg["accuracy"]
    series = {"full-problem mask": [acc["simple"][s] for s in SHOWN], "split mask": [acc[s][s] for s in SHOWN]}
    if agg.get("control"):  # the full-problem mask with as many random weights removed as the split mask lacks
        series["random control"] = [agg["control"][s] for s in SHOWN]
        if agg.get("control_pooled"):
            series["random pooled control"] = [agg["control_pooled"][s] for s in SHOWN]
    if agg.get("baseline"):
        series["from scratch on the split"] = [agg["baseline"].get(s, float("nan")) for s in SHOWN]  # nan: no bar
    plots.bar_groups(figures / "accuracy.png", list(SHOWN), {k: [mean(v) for v in vs] for k, vs in series.items()},
                     {k: [std(v) for v in vs] for k, vs in series.items()}, ylabel="test accuracy [%]",
                     title="Each split's test set", ylim=(0, 100))
    removed = agg["output_removed"]
    plots.bar_groups(figures / "output_removed.png", list(removed), {"removed": [mean(v) for v in removed.values()]},
                     {"removed": [std(v) for v in removed.values()]}, ylabel="removed [%]",
                     title="Output-layer weights of the simple mask that the jump mask removes")
    rows = [[mask] + [fmt(acc[mask][s]) for s in SPLITS] for mask in acc]
    control, pooled = agg.get("control") or {}, agg.get("control_pooled") or {}
    own, full = mean(acc["jump"]["jump"]), mean(acc["simple"]["jump"])
    model = {"transformer": "Transformer"}.get(summary["config"].get("model"), "LSTM")
    text = [f"# SCAN: {model} encoder-decoder", "",
            f"{run_line(summary)}; pretraining "
            f"{summary['config']['pretrain_steps']} steps on simple, {summary['config']['mask']['steps']} steps per mask.", "",
            "## Finding", "", PAPER_FINDING, "",
            f"Measured: on the jump test set the full-problem mask reaches {full:.1f}% and the jump mask {own:.1f}%; "
            f"the jump mask removes {mean(removed['I_JUMP']):.1f}% of I_JUMP's output weights "
            f"(the other tokens: {', '.join(f'{t} {mean(v):.1f}%' for t, v in removed.items() if t != 'I_JUMP')}).", "",
            *([against_control(acc, control, agg.get("control_pooled"), "units" if agg.get("units") else "weights"), ""]
              if control else []),
            *([curves_gap(agg["curves"]), ""] if "curves" in agg else []),
            "## Test accuracy of every mask on every split [%]", "",
            table(["mask", *SPLITS], rows), "", "![accuracy](figures/accuracy.png)", "",
            *([table(["split", "full-problem mask", "split mask", "random control",
                      *(["random pooled control"] if pooled else [])],
                     [[s, fmt(acc["simple"][s]), fmt(acc[s][s]), fmt(control[s]), *([fmt(pooled[s])] if pooled else [])]
                      for s in control]), "",
               "Random control: the full-problem mask with as many of its weights removed at random, in every "
               "tensor, as the split mask lacks of it; pooled: as many in total, drawn over all its tensors (means "
               "over the draws). The claim that the weights a split mask lacks are split-specific rests on the "
               "control that costs most.", ""] if control else []),
            *(["## Test accuracy in both removal modes [%]", "",
               "`random X`: the random control of split X's mask on X's test set (per tensor or pooled), as above.",
               "",
               removal_modes_section(agg["removal_modes"]), ""] if "removal_modes" in agg else []),
            *(["## Curves over density", "", CURVES_INTRO, "",
               curves_section(agg["curves"], CURVE_TITLES, figures, labels=CURVE_LABELS), ""] if "curves" in agg else []),
            "## Output tokens", "", "![removed](figures/output_removed.png)", ""]
    if agg.get("baseline"):
        text += ["From scratch on the split: " + ", ".join(f"{s} {fmt(v)}%" for s, v in agg["baseline"].items()), ""]
    if agg.get("overlap"):
        text += ["## Overlap of the four masks", "",
                 "Each pair's IoU and IoMin beside the chance level of random masks with the same number of "
                 "weights in every tensor: split-specific weights show as an overlap below the masks' own size "
                 "but still far above chance.", "", matrix_section(agg["overlap"], figures, out), ""]
    if agg.get("units"):
        text += ["## Units", "", "With unit masks the random controls above draw units, not weights: as many of "
                 "the full-problem mask's units (per unit set, or pooled) as the split mask lacks of it.", "",
                 units_section(agg["units"], figures, out, seeds=[s["units"] for s in summary["per_seed"]]), ""]
    text += [*timings_section(agg["timings"])]
    return save_report(out, text)
