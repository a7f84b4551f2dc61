"""Report of the permuted-MNIST continual-learning study (paper §2.7, figure 19)."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .study import curves_section, removal_modes_section, save_report
from .tables import fmt, mean, run_line, std, table, timings_section

PAPER_FINDING = ("The poster: \"no weight sharing up until there are enough free weights\": each new task's "
                 "mask uses few of the earlier tasks' (frozen) weights while free weights remain, and shares "
                 "more once they run out; initialising new logits lower (prefer old) raises sharing.")


CURVES_INTRO = ("Each task's mask read as a ranking of its logits (no extra training): the top d of its weights kept "
                "(sufficiency) or removed (necessity), on its own task, in the network that runs the task (the final "
                "weights with the task's first layer and its mask applied, so every weight kept is the task's masked "
                "accuracy above), beside the pruning baselines computed in that network on the task's training "
                "images. A mask's top weights should carry its task from a small density on, ahead of the baselines.")


def write_report(out: Path, summary: dict) -> Path:
    figures = out / "figures"
    agg = summary["aggregate"]
    config = summary["config"]
    layers = [n for n in agg["free"][0] if not n.startswith("layers.0.")]  # the reset layer is left out
    tasks = range(1, len(agg["sharing"]) + 1)
    shown = [p for p in tasks if p % 2 == 1] or list(tasks)
    labels = [f"Layer {int(n.split('.')[1]) + 1}" for n in layers]
    plots.bar_groups(figures / "sharing.png", labels,
                     {f"T{p + 1}": [mean(agg["sharing"][p - 1][n]) for n in layers] for p in shown},
                     {f"T{p + 1}": [std(agg["sharing"][p - 1][n]) for n in layers] for p in shown},
                     ylabel="shared with earlier tasks", title="Fraction of each new task's mask that earlier tasks use",
                     ylim=(0, 1))
    plots.line_plot(figures / "free.png", [f"T{p + 1}" for p in range(len(agg["free"]))],
                    {n: [mean(f[n]) * 100 for f in agg["free"]] for n in agg["free"][0]},
                    {n: [std(f[n]) * 100 for f in agg["free"]] for n in agg["free"][0]},
                    xlabel="after task", ylabel="free weights [%]", title="Weights no task uses yet")
    # chance: a random mask with task p's count in a layer lands in the earlier tasks' weights as
    # often as they fill the layer, 1 - (free before task p)
    chance = {p: {n: 1 - mean(agg["free"][p - 1][n]) for n in layers} for p in tasks}
    sharing_rows = [[f"T{p + 1}"] + [cell for n in layers for cell in (fmt(agg["sharing"][p - 1][n], 3),
                                                                        f"{chance[p][n]:.3f}")]
                    + [fmt(agg["free"][p - 1][layers[0]], 3)] for p in tasks]
    above = [mean(agg["sharing"][p - 1][n]) / chance[p][n] for p in tasks for n in layers if chance[p][n] > 0]
    verdict = (f"Against chance (a random mask of the same size in each layer shares 1 - the free fraction): "
               f"each new task's mask shares {min(above):.1f}-{max(above):.1f}x what a random mask of its size "
               f"would, in every layer and task: the new tasks reuse old weights more than chance, even while "
               f"free weights remain." if above and min(above) > 1 else
               "Against chance (a random mask of the same size in each layer shares 1 - the free fraction): "
               "some tasks share no more than chance: " + ", ".join(
                   f"T{p + 1} {label}" for p in tasks for n, label in zip(layers, labels)
                   if chance[p][n] > 0 and mean(agg["sharing"][p - 1][n]) <= chance[p][n]) + ".")
    accuracy_rows = [[f"T{q + 1}", fmt(a)] for q, a in enumerate(agg["accuracy"])]
    text = [f"# Permuted MNIST: FNN 784-{'-'.join(str(h) for h in config['hidden'])}-10", "",
            f"{run_line(summary)}; {config['tasks']} tasks, "
            f"{config['mask']['steps']} steps each, k {config['mask']['k']}, beta {config['mask']['beta']}, new-weight logits "
            f"{config['mask_new_init']}.", "",
            "## Finding", "", PAPER_FINDING, "", verdict, "",
            "## Sharing with earlier tasks", "",
            table(["task", *[h for label in labels for h in (label, "chance")], f"free in {layers[0]} before it"],
                  sharing_rows), "",
            "Chance: the share of a random mask with the task's weight count in the layer that falls in the "
            "earlier tasks' weights (the fraction they use).", "",
            "![sharing](figures/sharing.png)", "", "![free](figures/free.png)", "",
            "## Accuracy of every task with its own mask, after all tasks [%]", "",
            table(["task", "accuracy"], accuracy_rows), "",
            *(["## The same in both removal modes [%]", "",
               removal_modes_section(agg["removal_modes"], {"accuracy": "accuracy with its mask"},
                                     {t: f"{t} mask" for t in agg["removal_modes"]["modes"]["zero"]}), ""]
              if "removal_modes" in agg else []),
            *(["## Curves over density", "", CURVES_INTRO, "",
               curves_section(agg["curves"], {f: f"T{int(f.removeprefix('task-')) + 1}" for f in agg["curves"]},
                              figures, labels={f"mask {f}": f"T{int(f.removeprefix('task-')) + 1} mask"
                                               for f in agg["curves"]}), ""] if "curves" in agg else []),
            *timings_section(agg["timings"])]
    return save_report(out, text)
