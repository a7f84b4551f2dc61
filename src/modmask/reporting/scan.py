"""Report of the SCAN study (paper §2.3, §2.4, figures 12-14) for either model."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .study import matrix_section, save_report
from .tables import fmt, mean, run_line, std, table, timings_section

SPLITS = ("simple", "jump", "length", "turn_left")
SHOWN = ("turn_left", "jump", "length")
PAPER_FINDING = ("The paper (poster): a network pretrained on all of SCAN performs well on all splits, yet "
                 "masks trained on a specific split find split-specific weights: on jump and length the "
                 "split's own mask does much worse than the full-problem mask (near the from-scratch "
                 "baseline), while turn_left stays high. In the decoder's output layer the jump mask "
                 "removes most of the weights of I_JUMP.")


def against_control(acc: dict, control: dict) -> str:
    """One sentence per split: is the split mask worse on its split than a random subset of the
    full-problem mask of the same size?"""
    parts = []
    for split, value in control.items():
        own, reference = mean(acc[split][split]), mean(value)
        verdict = ("so the weights it lacks are split-specific" if own < reference - 10 else
                   "better than the control: it keeps what its split needs and lacks only weights the split "
                   "can do without" if own > reference + 10 else
                   "so what it lacks matters no more than as many random weights of the full-problem mask")
        parts.append(f"on {split} the {split} mask reaches {own:.1f}% against {reference:.1f}% for the full-problem "
                     f"mask with as many random weights removed, {verdict}")
    return "Against the random control: " + "; ".join(parts) + "."


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    acc = agg["accuracy"]
    series = {"full-problem mask": [acc["simple"][s] for s in SHOWN], "split mask": [acc[s][s] for s in SHOWN]}
    if agg.get("control"):  # the full-problem mask with as many random weights removed as the split mask lacks
        series["random control"] = [agg["control"][s] for s in SHOWN]
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
    control = agg.get("control") or {}
    own, full = mean(acc["jump"]["jump"]), mean(acc["simple"]["jump"])
    model = {"transformer": "Transformer"}.get(summary["config"].get("model"), "LSTM")
    text = [f"# SCAN: {model} encoder-decoder", "",
            f"{run_line(summary)}; pretraining "
            f"{summary['config']['pretrain_steps']} steps on simple, {summary['config']['mask']['steps']} steps per mask.", "",
            "## Finding", "", PAPER_FINDING, "",
            f"Measured: on the jump test set the full-problem mask reaches {full:.1f}% and the jump mask {own:.1f}%; "
            f"the jump mask removes {mean(removed['I_JUMP']):.1f}% of I_JUMP's output weights "
            f"(the other tokens: {', '.join(f'{t} {mean(v):.1f}%' for t, v in removed.items() if t != 'I_JUMP')}).", "",
            *([against_control(acc, control), ""] if control else []),
            "## Test accuracy of every mask on every split [%]", "",
            table(["mask", *SPLITS], rows), "", "![accuracy](figures/accuracy.png)", "",
            *([table(["split", "full-problem mask", "split mask", "random control"],
                     [[s, fmt(acc["simple"][s]), fmt(acc[s][s]), fmt(control[s])] for s in control]), "",
               "Random control: the full-problem mask with as many of its weights removed at random, in every "
               "tensor, as the split mask lacks of it (mean over the draws).", ""] if control else []),
            "## Output tokens", "", "![removed](figures/output_removed.png)", ""]
    if agg.get("baseline"):
        text += ["From scratch on the split: " + ", ".join(f"{s} {fmt(v)}%" for s, v in agg["baseline"].items()), ""]
    if agg.get("overlap"):
        text += ["## Overlap of the four masks", "",
                 "Each pair's IoU and IoMin beside the chance level of random masks with the same number of "
                 "weights in every tensor: split-specific weights show as an overlap below the masks' own size "
                 "but still far above chance.", "", matrix_section(agg["overlap"], figures, out), ""]
    text += [*timings_section(agg["timings"])]
    return save_report(out, text)
