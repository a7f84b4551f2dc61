"""Report of a study (a model, one mask per function): removal matrix, overlaps, figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.curves import BASELINE_METHODS, RANDOM, RANDOM_PER_TENSOR
from ..core.stats import summarize
from ..runs import write_text
from . import plots
from .training import training_section
from .tables import fmt, mean, std, table, timings_section


def removal_section(metric: dict, titles: dict, figure: Path | None = None, controls: dict | None = None) -> str:
    """Each function's metric under no mask, each mask and each inverse mask, and beside each the
    random controls (mean ± std over the draws) where the results have them: per tensor, and for an
    inverse mask also pooled over the tensors."""
    names = list(titles)
    if controls:
        ordered = {}
        for condition, values in metric.items():
            ordered[condition] = values
            for control in (f"random {condition}", f"random pooled {condition}"):
                if control in controls:
                    ordered[control] = controls[control]
        metric = ordered
    rows = [[condition] + [fmt(metric[condition][n], 3) for n in names] for condition in metric]
    text = table(["condition"] + [titles[n] for n in names], rows)
    if figure:
        plots.bar_groups(figure, list(metric), {titles[n]: [mean(metric[c][n]) for c in metric] for n in names},
                         {titles[n]: [std(metric[c][n]) for c in metric] for n in names},
                         ylabel="metric", title="Each function under each mask and its inverse")
        text += f"\n\n![removal]({figure.parent.name}/{figure.name})"
    return text


MODES_NOTE = ("`zero`: a removed weight is 0 (the paper's), which also shifts the means that later layers see; "
              "`mean`: a removed weight contributes its weight times its input's mean (read through the unmasked "
              "model on the evaluated data), so those means are kept and only what varies with the input is "
              "removed. Where a mask's effect holds in both modes it is not the mean shift alone.")


def removal_modes_section(block: dict, titles: dict | None = None, labels: dict | None = None,
                          unit: str = "accuracy [%]", digits: int = 1) -> str:
    """A study's "removal_modes" block ({"trained_with": mode, "modes": {mode: {condition: {column:
    value}}}}, runs.study.removal_in_modes or a study's own table in that form; one run's, or
    aggregated over seeds) in markdown: the mode the masks trained in, then one row per condition
    and, for every column (a function, or a study's measure), its value in each mode side by side.
    Controls hold their mean over the random draws. titles: column -> its title; labels: condition
    -> its row label; unit: what the values are (they are shown as stored); a missing value is '–'."""
    titles, labels, modes = titles or {}, labels or {}, block["modes"]
    conditions = list(dict.fromkeys(c for table in modes.values() for c in table))
    columns = list(dict.fromkeys(f for table in modes.values() for row in table.values() for f in row))
    cell = lambda mode, c, f: fmt(modes[mode][c][f], digits) if f in modes[mode].get(c, {}) else "–"  # noqa: E731
    rows = [[labels.get(c, c)] + [cell(m, c, f) for f in columns for m in modes] for c in conditions]
    header = ["condition"] + [f"{titles.get(f, f)}, {m}" for f in columns for m in modes]
    return (f"Masks trained with `{block['trained_with']}` removal; a mask means what it does in the mode it was "
            f"trained in. Each column in both removal modes side by side ({unit}; random controls: the mean over "
            f"their draws).\n\n" + table(header, rows) + "\n\n" + MODES_NOTE)


CLAIMS = ("more", "less")


def strictest(costs: dict[str, float], claim: str) -> str:
    """The random control a claim about a removal's cost must beat, of `costs` (control -> the
    cost of that random removal, e.g. points of accuracy lost): for "more" (removing the mask costs
    more than removing random weights) the costliest, for "less" (it costs less: e.g. another
    function survives it) the cheapest. Pooled random removal usually costs more where a small
    tensor is fragile, per-tensor removal where the mask's weights sit in such a tensor."""
    if claim not in CLAIMS:
        raise ValueError(f"claim must be 'more' or 'less' (removing the mask costs more or less than random), "
                         f"not {claim!r}")
    return (max if claim == "more" else min)(costs, key=costs.get)


def versus_random(cost: float, costs: dict[str, float], margin: float) -> tuple[str, str | None]:
    """How the cost of removing a mask compares with random removals of as many weights (`costs`:
    control -> its cost): ("more", the costliest control) where it costs more than every one by
    `margin`, ("less", the cheapest) where it costs less than every one by `margin`, else ("same",
    None). Each claim rests on the control that is hardest for it (strictest)."""
    more, less = strictest(costs, "more"), strictest(costs, "less")
    if cost > costs[more] + margin:
        return "more", more
    if cost < costs[less] - margin:
        return "less", less
    return "same", None


def removal_costs(acc: dict, removed: str, column: str, reference: str = "Full") -> dict[str, float]:
    """What removing random weights instead of the mask of the inverse-mask row `removed` (e.g. "¬+")
    costs the column `column` of an accuracy table acc[condition][column], per tensor ("random ¬+")
    and pooled ("random pooled ¬+"; absent from runs made before it): reference - control."""
    rows = {"per tensor": f"random {removed}", "pooled": f"random pooled {removed}"}
    return {label: mean(acc[reference][column]) - mean(acc[row][column]) for label, row in rows.items() if row in acc}


def costs_text(costs: dict[str, float], digits: int = 1) -> str:
    """'12.3 per tensor and 45.6 pooled'."""
    return " and ".join(f"{cost:.{digits}f} {label}" for label, cost in costs.items())


def removal_finding(metric: dict, controls: dict, titles: dict, margin: float = 0.1) -> str:
    """Per mask of a function, in words: what removing it costs that function against the random
    removals per tensor and pooled, and the control the verdict rests on (the costlier one: the
    claim is that removing the mask costs more than removing as many random weights). margin: how
    much more, in the metric's units (0.1: 10 points of an accuracy in [0, 1])."""
    parts = []
    for name, title in titles.items():
        costs = {label: mean(metric["none"][name]) - mean(controls[key][name]["mean"])
                 for key, label in ((f"random not {name}", "per tensor"), (f"random pooled not {name}", "pooled"))
                 if key in controls}
        if f"not {name}" not in metric or not costs:
            continue
        own = mean(metric["none"][name]) - mean(metric[f"not {name}"][name])
        verdict, rests = versus_random(own, costs, margin)
        parts.append(f"Removing the {title} mask costs {title} {own:.3g}; removing as many random weights costs it "
                     f"{costs_text(costs, 3)}: the effect "
                     + (f"holds (by more than {margin:g}) against the costlier, {rests} random removal." if verdict == "more"
                        else f"does not hold against the costlier, {strictest(costs, 'more')} random removal."))
    return " ".join(parts)


def overlap_section(masks: dict, figures: Path | None = None, report_dir: Path | None = None,
                    seeds: list[dict] | None = None) -> str:
    """Per-layer weights, IoU and IoMin of every compared pair, each beside its chance level where
    the results have it (random masks of the same per-layer counts, docs/controls.md); shared
    fractions; the overlap matrix of three or more masks; for unit masks, units_section (seeds: each
    seed's statistics, for what is read per network). Figures go to `figures`, linked relative
    to `report_dir` (default: its parent)."""
    parts = []
    base = report_dir or (figures.parent if figures else None)
    for pair, rows in masks["overlap"].items():
        a, b = pair.split("|")
        chance = "iou_chance" in rows[-1]
        header = ["tensor", "size", f"weights {a}", f"weights {b}", "IoU", *(["chance IoU"] if chance else []),
                  "IoMin", *(["chance IoMin", "z"] if chance else []), f"shared {a}", f"shared {b}"]
        body = [[r["tensor"], fmt(r["size"], 0), fmt(r[f"count_{a}"], 0), fmt(r[f"count_{b}"], 0), fmt(r["iou"], 3),
                 *([fmt(r["iou_chance"], 3)] if chance else []), fmt(r["iomin"], 3),
                 *([fmt(r["iomin_chance"], 3), fmt(r["z"], 1)] if chance else []),
                 fmt(r[f"shared_{a}"], 3), fmt(r[f"shared_{b}"], 3)] for r in rows]
        parts.append(f"**{a} vs {b}**\n\n" + table(header, body))
        if chance:
            parts.append("Chance: the expected score of independent uniformly random masks with the same number "
                         "of weights in every tensor (exact, hypergeometric); z: how many standard deviations "
                         "the observed intersection lies above its chance level.")
        if figures:
            layers = [r["tensor"] for r in rows]
            series = {"IoU": "iou", **({"chance IoU": "iou_chance"} if chance else {}), "IoMin": "iomin",
                      **({"chance IoMin": "iomin_chance"} if chance else {})}
            path = figures / f"iou_{a}_{b}.png"
            plots.bar_groups(path, layers, {k: [mean(r[v]) for r in rows] for k, v in series.items()},
                             {k: [std(r[v]) for r in rows] for k, v in series.items()},
                             ylabel="proportion", title=f"Overlap of the {a} and {b} masks", ylim=(0, 1))
            counts = figures / f"weights_{a}_{b}.png"
            plots.bar_groups(counts, layers[:-1], {a: [mean(r[f"count_{a}"]) for r in rows[:-1]],
                                                   b: [mean(r[f"count_{b}"]) for r in rows[:-1]]},
                             {a: [std(r[f"count_{a}"]) for r in rows[:-1]], b: [std(r[f"count_{b}"]) for r in rows[:-1]]},
                             ylabel="weights in mask", title="Weights per layer")
            parts.append(f"![iou]({path.relative_to(base)}) ![weights]({counts.relative_to(base)})")
    if masks.get("shared_fraction"):
        chance = any("total_chance" in v for v in masks["shared_fraction"].values())
        rows = [[n, fmt(v["total"], 3), *([fmt(v.get("total_chance"), 3)] if chance else [])]
                for n, v in masks["shared_fraction"].items()]
        parts.append("Fraction of each mask's weights also used by another compared mask "
                     "(|M_i ∧ ∪ M_j| / |M_i|):\n\n" + table(["mask", "shared", *(["chance"] if chance else [])], rows))
    if masks.get("matrix") and len(masks["matrix"]["labels"]) > 2:
        parts.append(matrix_section(masks["matrix"], figures, base))
    if masks.get("units"):  # unit masks: the same read by unit
        parts.append("**By unit**\n\n" + units_section(masks["units"], figures, base,
                                                       seeds=[seed["units"] for seed in seeds] if seeds else None))
    return "\n\n".join(parts)


def matrix_section(matrix: dict, figures: Path | None, base: Path | None, name: str = "overlap_matrix") -> str:
    """The overlap matrix of any number of masks (core.analysis.overlap_matrix, possibly aggregated
    over seeds): a table of every pair with chance levels, and a heat map."""
    rows = [[p["a"], p["b"], fmt(p["iou"], 3), fmt(p["iou_chance"], 3), fmt(p["iomin"], 3), fmt(p["iomin_chance"], 3),
             fmt(p["z"], 1)] for p in matrix["pairs"]]
    text = table(["mask", "mask", "IoU", "chance IoU", "IoMin", "chance IoMin", "z"], rows)
    if figures:
        grid = lambda key: [[mean(v) for v in row] for row in matrix[key]]  # noqa: E731
        path = figures / f"{name}.png"
        plots.overlap_heatmap(path, matrix["labels"], {"IoU": grid("iou"), "IoMin": grid("iomin")},
                              {"IoU": grid("iou_chance"), "IoMin": grid("iomin_chance")},
                              title="Overlap of the masks (below: chance)")
        text += f"\n\n![overlap matrix]({path.relative_to(base)})"
    return text


UNITS_INTRO = ("The masks read by unit (`mask.granularity`): a unit is one head or one neuron (or row, column) "
               "whose weights share one logit; `layer L` counts the model's attention modules (or MLP blocks) in "
               "order. Chance levels here are those of random *units*: the same number of units in every unit set.")


def units_section(units: dict, figures: Path | None = None, report_dir: Path | None = None, name: str = "",
                  seeds: list[dict] | None = None) -> str:
    """The masks read by unit (runs.study.unit_statistics, possibly aggregated over seeds): per unit
    set the units each mask keeps, by index; a heat map of the heads (attention modules x heads, a
    panel per mask); the fraction of each set's units kept; and the overlap of the masks' units
    against random units, pooled and per set. seeds: each seed's unit_statistics, for the indices
    and heat maps per seed (seeds usually pretrain different networks, whose head 3 is not the same
    head: only counts and overlaps average over seeds). name: a prefix of the figures' file names
    (several unit sections in one report)."""
    sets = units["sets"]
    runs = [seed["kept"] for seed in seeds] if seeds else [units["kept"]]  # one network each
    names = list(runs[0])
    base = report_dir or (figures.parent if figures else None)

    def title(unit_set: str) -> str:
        v = sets[unit_set]
        return v["label"] if v["label"] == v["module"] else f"{v['label']} ({v['module']})"

    def kept(run: dict, mask: str, unit_set: str) -> list[float]:
        return [mean(v) for v in run[mask][unit_set]]  # 0/1 (a fraction of seeds where aggregated)

    def cell(mask: str, unit_set: str) -> str:
        counts = [sum(kept(run, mask, unit_set)) for run in runs]
        text = fmt(summarize(counts), 1) if len(counts) > 1 else f"{counts[0]:.3g}"
        listed = [", ".join(f"{i}" + ("" if v == 1 else f" ({v:.2g})") for i, v in enumerate(kept(run, mask, unit_set))
                            if v > 0) or "none" for run in runs]
        if sum(len(units) for units in listed) > 60:  # many units: the count alone
            return text
        return text + (f": {listed[0]}" if len(runs) == 1 else
                       " (" + "; ".join(f"seed {i}: {units}" for i, units in enumerate(listed)) + ")")

    rows = [[title(s), v["kind"], fmt(v["count"], 0), *[cell(n, s) for n in names]] for s, v in sets.items()]
    parts = [UNITS_INTRO, table(["unit set", "kind", "units", *[f"kept by {n}" for n in names]], rows)]
    heads = [s for s, v in sets.items() if v["kind"] == "head"]
    if figures and heads:
        width = max(len(runs[0][names[0]][s]) for s in heads)
        for index, run in enumerate(runs):
            grids = {n: np.array([kept(run, n, s) + [np.nan] * (width - len(run[n][s])) for s in heads])
                     for n in names}
            path = figures / (f"{name}heads.png" if len(runs) == 1 else f"{name}heads_seed{index}.png")
            whole = all(v in (0, 1) for g in grids.values() for v in g[~np.isnan(g)])
            plots.unit_heatmap(path, grids, [title(s) for s in heads], [str(h) for h in range(width)],
                               title="Heads each mask keeps" + (f", seed {index}" if len(runs) > 1 else "")
                               + (" (1: kept)" if whole else " (fraction of seeds)"))
            parts.append(f"![heads]({path.relative_to(base)})")
    neurons = [s for s, v in sets.items() if v["kind"] != "head"]
    if figures and neurons:
        path = figures / f"{name}units_per_layer.png"
        plots.bar_groups(path, [f"{title(s)} {sets[s]['kind']}s" for s in neurons],
                         {n: [float(np.mean([np.mean(kept(run, n, s)) for run in runs])) for s in neurons]
                          for n in names},
                         ylabel="fraction of units kept", title="Units kept per unit set", ylim=(0, 1))
        parts.append(f"![units per layer]({path.relative_to(base)})")
    matrix = units.get("matrix")
    if matrix:
        parts.append("Overlap of the masks' units (a unit counts one), against random units of the same count "
                     "in every set:\n\n" + matrix_section(matrix, figures, base, name=f"{name}unit_overlap_matrix"))
        pairs = [(i, j) for i in range(len(matrix["labels"])) for j in range(i + 1, len(matrix["labels"]))]
        per_set = [[title(s),
                    *[f"{fmt(matrix['per_layer'][s]['iou'][i][j], 2)} ({fmt(matrix['per_layer'][s]['iou_chance'][i][j], 2)})"
                      for i, j in pairs]] for s in sets]
        parts.append("IoU of the units per unit set (chance in brackets):\n\n" + table(
            ["unit set", *[f"{matrix['labels'][i]} vs {matrix['labels'][j]}" for i, j in pairs]], per_set))
    return "\n\n".join(parts)


def histogram_figure(masks: dict, path: Path) -> str:
    curves = {n: (h["counts"] if not isinstance(h["counts"][0], dict) else [mean(c) for c in h["counts"]],
                  h["edges"] if not isinstance(h["edges"][0], dict) else [mean(e) for e in h["edges"]])
              for n, h in masks["histogram"].items()}
    plots.histogram(path, curves, title="Keep probabilities sigmoid(logit) of the masks")
    return f"![histogram]({path.parent.name}/{path.name})"


def half_mask_section(half: dict, figures: Path) -> str:
    """The half-mask test's figure and sentence (§2.8)."""
    plots.bar_groups(figures / "half_mask.png", ["early masked", "late masked"],
                     {"drop": [mean(half["early_masked_drop"]), mean(half["late_masked_drop"])]},
                     {"drop": [std(half["early_masked_drop"]), std(half["late_masked_drop"])]},
                     ylabel="accuracy drop [%]", title="Full mask on half of the layers", ylim=(0, 100))
    return (f"Full-mask accuracy {fmt(half['full_mask_accuracy'])}%. Early masked = the Full mask on "
            f"{', '.join(half['layers_early'])} only; late masked = on {', '.join(half['layers_late'])} only. "
            f"Drops: early {fmt(half['early_masked_drop'])}, late {fmt(half['late_masked_drop'])} points."
            "\n\n![half mask](figures/half_mask.png)")


RANDOM_LABELS = {RANDOM: "random (pooled)", RANDOM_PER_TENSOR: "random (per tensor)"}
MARGIN = 0.05  # an area difference smaller than this is "about the same" (seeds and draws move areas this much)
CURVES_CAPTION = (
    "Sufficiency: the metric with only the top d of a ranking's weights kept in the curve's tensors; necessity: "
    "with them removed (the other weights kept). Area: the mean over log density of the curve normalised between "
    "every weight of those tensors kept and none kept, so 1 is best on both sides (the whole function from the "
    "smallest density on, or gone at it) and 0 is no better than keeping nothing or removing nothing. The masks' "
    "rows read each trained mask as a ranking of its logits, with no extra training. Random weights come two ways: "
    "`random (pooled)` draws d of all the tensors' weights, the null of a pooled ranking (a mask's logits, "
    "magnitude, ...): every tensor loses about d, but by chance more or less (small tensors' shares vary most), which makes it "
    "usually the stricter control for removal; `random (per tensor)` draws exactly d of every tensor, matched to "
    "the layer sizes, the reference for which weights a ranking picks within each layer. Each verdict names the "
    "random control it rests on: the stricter of the two (the higher area) on that side. Lines: mean over the "
    "random draws "
    f"(shaded: their std); a difference of areas under {MARGIN} counts as about the same. Every point removes weights "
    "in the removal mode each function's line names (`zero`: set to 0; `mean`: replaced by their contribution at "
    "their inputs' means); `modmask curve RUN --set curves.removal=mean` recomputes the curves in the other mode.")


def _method_label(method: str, labels: dict | None) -> str:
    return RANDOM_LABELS.get(method) or (labels or {}).get(method, method)


def _area(values: dict, side: str) -> float | None:
    return mean(values.get(f"{side}_area"))


def _band(values: dict, side: str) -> list[float] | None:
    """The shaded band of a curve: its std over seeds where aggregated, else over the random draws."""
    over_seeds = [std(v) for v in values[side]]
    if any(over_seeds):
        return over_seeds
    draws = values.get(f"{side}_std")
    return [mean(v) or 0.0 for v in draws] if draws else None


def curves_finding(curve: dict, title: str, labels: dict | None = None) -> str:
    """In words, for one function: where each mask's ranking beats the best baseline and by how much
    in area, where it does not, and the random control each side rests on (the stricter one)."""
    if curve.get("note"):
        return f"On {title}: {curve['note']}."
    methods = curve["methods"]
    baselines = {m: v for m, v in methods.items() if m in BASELINE_METHODS}
    masks = {m: v for m, v in methods.items() if m not in BASELINE_METHODS}
    best = {side: max(((m, _area(v, side)) for m, v in baselines.items() if _area(v, side) is not None),
                      key=lambda pair: pair[1], default=None) for side in ("sufficiency", "necessity")}
    parts = []
    for method, values in masks.items():
        clauses, wins = [], []
        for side in ("sufficiency", "necessity"):
            own = _area(values, side)
            if best[side] is None or own is None:
                clauses.append(f"{side} area {fmt(own, 2)}")
                continue
            name, area = best[side]
            difference = own - area
            wins.append(difference > MARGIN)
            verdict = ("beats" if difference > MARGIN else "does not beat" if difference < -MARGIN else "matches")
            clauses.append(f"{side} area {own:.2f} {verdict} the best baseline, {_method_label(name, labels)} "
                           f"({area:.2f}, {difference:+.2f})")
        summary = ("" if len(wins) < 2 else ", so it beats every baseline on both sides" if all(wins) else
                   ", so it beats every baseline on neither side" if not any(wins) else
                   f", so it beats every baseline on {'sufficiency' if wins[0] else 'necessity'} only")
        parts.append(f"{_method_label(method, labels)}: " + "; ".join(clauses) + summary + ".")
    randoms = {m: methods[m] for m in (RANDOM, RANDOM_PER_TENSOR) if m in methods}
    if len(randoms) == 2:
        rests = []
        for side in ("sufficiency", "necessity"):
            areas = {m: _area(v, side) for m, v in randoms.items()}
            if None in areas.values():
                continue
            stricter = max(areas, key=areas.get)
            other = next(m for m in areas if m != stricter)
            rests.append(f"for {side} on {RANDOM_LABELS[stricter]} (area {areas[stricter]:.2f}; "
                         f"{RANDOM_LABELS[other]} {areas[other]:.2f})")
        if rests:
            parts.append("Against random weights they rest on the stricter random control of each side: "
                         + "; ".join(rests) + ".")
    return f"On {title}: " + " ".join(parts)


def sufficiency_gaps(curve_block: dict, masks: tuple[str, str], functions: tuple[str, str]) -> tuple[float, float] | None:
    """How much more of each of two functions the first mask's top weights carry than the second's:
    the sufficiency area of "mask <a>" minus that of "mask <b>" on functions[0] and on functions[1]
    (a curves block, one run's or aggregated); None where an area is undefined. A gap on the first
    function beyond the one on the second (by MARGIN) says that function needs weights the second
    mask ranks low, beyond its being a weaker mask overall (e.g. a split's test set against the IID
    one, a split mask against the full-problem mask)."""
    gaps = []
    for function in functions:
        areas = [mean(curve_block[function]["methods"][f"mask {m}"]["sufficiency_area"]) for m in masks]
        if None in areas:
            return None
        gaps.append(areas[0] - areas[1])
    return gaps[0], gaps[1]


def curves_section(curves: dict, titles: dict | None, figures: Path, base: Path | None = None,
                   name: str = "curves", labels: dict | None = None) -> str:
    """The "curves" block of a study's results (runs.study.study_curves: function -> core.curves
    result; one run's, or aggregated over seeds into {"mean", "std"} leaves), rendered: per
    function a table of the areas (method, sufficiency area, necessity area), a figure (the two
    curves over density, log axis, one line per method) and a sentence (curves_finding), then
    the caption (CURVES_CAPTION). Figures go to figures/<name>_<function>.png, linked relative to
    `base` (default: the parent of `figures`); titles: function -> its title; labels: method -> its
    name in the report (e.g. {"mask add": "+ mask"})."""
    base = base or figures.parent
    titles = titles or {}
    parts = []
    for function, curve in curves.items():
        title = titles.get(function, function)
        methods = curve["methods"]
        densities = [mean(d) for d in curve["densities"]]
        rows = [[_method_label(m, labels), fmt(v.get("sufficiency_area"), 3), fmt(v.get("necessity_area"), 3)]
                for m, v in methods.items()]
        sides = ("sufficiency", "necessity")
        path = plots.curve_panels(
            figures / f"{name}_{function}.png", densities,
            {side: {_method_label(m, labels): [mean(x) for x in v[side]] for m, v in methods.items()} for side in sides},
            {side: {_method_label(m, labels): band for m, v in methods.items() if (band := _band(v, side))}
             for side in sides},
            {"all kept": mean(curve["full"]), "none kept": mean(curve["empty"])}, title=f"{title}: curves over density")
        subset = curve["subset"]
        tensors = ", ".join(subset) if len(subset) <= 4 else f"{len(subset)} tensors, {subset[0]} to {subset[-1]}"
        kept = [f"{_method_label(m, labels)} kept {', '.join(f'{100 * mean(k):.3g}%' for k in v['kept'])}"
                for m, v in methods.items() if "kept" in v]  # masks trained to each density may miss it
        parts.append(f"**{title}** (tensors: {tensors}; metric {fmt(curve['full'], 3)} with all their weights, "
                     f"{fmt(curve['empty'], 3)} with none; {curve.get('removal', 'zero')} removal)\n\n"
                     + table(["method", "sufficiency area", "necessity area"], rows)
                     + (f"\n\nMasks trained to the densities {', '.join(f'{100 * d:.3g}%' for d in densities)}: "
                        + "; ".join(kept) + "." if kept else "")
                     + f"\n\n![{name} {function}]({path.relative_to(base)})\n\n" + curves_finding(curve, title, labels))
    return "\n\n".join(parts + [CURVES_CAPTION])


def save_report(run_dir: Path, lines: list[str]) -> Path:
    """Write report.md atomically."""
    path = Path(run_dir) / "report.md"
    write_text(path, "\n".join(lines))
    return path


def write_study_report(run_dir: str | Path, results: dict) -> Path:
    run_dir = Path(run_dir)
    figures = run_dir / "figures"
    text = ["# Modularity study", "",
            "One mask per function was trained on the frozen model. A function that needs its own "
            "weights loses its metric under its inverse mask (`not <name>`), while other functions keep theirs.",
            "", "## Removal matrix", "", removal_section(results["metric"], results["functions"],
                                                      figures / "removal.png", results.get("controls")), "",
            "`random X`: a random mask with X's number of weights in every tensor kept instead of X; "
            "`random not X`: as many random weights removed instead of X's in every tensor, `random pooled not X`: "
            "as many in total, drawn over all the masked tensors (mean ± std over the draws). An effect of removing "
            "X means something only where it exceeds both random removals; the verdict rests on the costlier.",
            *(["", removal_finding(results["metric"], results["controls"], results["functions"])]
              if results.get("controls") else []),
            *(["", "## Removal in both modes", "",
               removal_modes_section(results["removal_modes"], results["functions"], unit="metric", digits=3)]
              if "removal_modes" in results else []),
            *(["", "## Curves over density", "", curves_section(results["curves"], results["functions"], figures,
                                                             labels={f"mask {n}": f"mask {t}" for n, t in
                                                                     results["functions"].items()})]
              if "curves" in results else []),
            "", "## Masks", "", overlap_section(results["masks"], figures), "",
            histogram_figure(results["masks"], figures / "histogram.png"), "",
            *training_section(results), *timings_section(results["timings"], "Timings")]
    return save_report(run_dir, text)
