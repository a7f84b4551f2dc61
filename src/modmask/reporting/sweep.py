"""Report of a sweep directory (launch/sweep.py): every grid point's results aggregated over
the seeds that finished (mean ± std), in sweep_results.json and a table in report.md.

The report knows no experiment: it reads whatever the points' results name. The headline of a
result is the sharing of every pair of masks it compares (`masks.overlap`, "a|b", as the generic
study writes it: the fraction of each mask shared with the other and their IoU, pooled over the
tensors; masks named by their titles in `functions` where the results have them), then the first
numbers of the rest. For every such pair and every grid key with two or more values, a figure
shows the sharing against that key, one per combination of the other grid values (for the add/mul
study over `hidden` and `beta`: paper figures 8 and 9).
"""

from __future__ import annotations

from pathlib import Path

from ..runs import SWEEP_FILE, aggregate, read_json, value_text, write_json
from . import plots
from .study import save_report
from .tables import fmt, mean, std, table

GENERIC_COLUMNS = 8


def is_sweep(out: str | Path) -> bool:
    return (Path(out) / SWEEP_FILE).exists()


def mask_pairs(results: dict) -> dict[str, tuple[str, str, dict[str, float]]]:
    """The pairs of masks that one seed's results compare, "a|b" -> (title of a, title of b,
    {column: value}): the fraction of each mask shared with the other ("a shared with b") and their
    IoU, from the pooled row of `masks.overlap`."""
    masks = results.get("masks")
    overlap = masks.get("overlap") if isinstance(masks, dict) else None
    titles = results.get("functions") if isinstance(results.get("functions"), dict) else {}
    pairs = {}
    for pair, rows in (overlap or {}).items():
        total = next((row for row in rows if row.get("tensor") == "total"), None) if isinstance(rows, list) else None
        if total is None or "|" not in pair:
            continue
        a, b = pair.split("|", 1)
        ta, tb = titles.get(a, a), titles.get(b, b)
        pairs[pair] = (ta, tb, {f"{ta} shared with {tb}": total[f"shared_{a}"],
                                f"{tb} shared with {ta}": total[f"shared_{b}"], f"IoU ({ta}, {tb})": total["iou"]})
    return pairs


def _numbers(value, path: str = ""):
    """(path, number) of every numeric leaf, in order."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}/{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def headline(results: dict) -> dict[str, float]:
    """The few numbers of one seed's results that the sweep table shows: the sharing of every pair
    of masks they compare, then the first numbers of the rest (timings and the mask statistics
    left out)."""
    columns = {column: value for _, _, pair in mask_pairs(results).values() for column, value in pair.items()}
    rest = {k: v for k, v in results.items() if k not in ("timings", "masks")}
    return {**columns, **dict(list(_numbers(rest))[:GENERIC_COLUMNS])}


def load_points(out: Path, sweep: dict) -> list[dict]:
    """Per point: name, values, the seeds that finished and their results."""
    points = []
    for point in sweep["points"]:
        seeds = [s for s in range(sweep["seeds"]) if (out / point["name"] / f"seed-{s}" / "results.json").exists()]
        per_seed = [read_json(out / point["name"] / f"seed-{s}" / "results.json") for s in seeds]
        points.append({**point, "seeds": seeds, "per_seed": per_seed})
    return points


def _summaries(points: list[dict]) -> list[dict]:
    """Mean and std over seeds of each point's headline numbers and time (None: no seed finished)."""
    out = []
    for p in points:
        rows = [{**headline(r), "time [s]": sum((r.get("timings") or {}).values())} for r in p["per_seed"]]
        out.append(aggregate(rows) if rows else None)
    return out


def _axis(values: list) -> tuple[list, bool]:
    """The x values of a grid key and whether to draw them on a log scale: numbers as they are
    (log when all are positive and span a factor of 10 or more), anything else (tuples such as
    hidden sizes, names, booleans) by its folder text."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values, min(values) > 0 and max(values) >= 10 * min(values)
    return [value_text(v) for v in values], False


def _sharing_figures(out: Path, sweep: dict, points: list[dict], summaries: list[dict]) -> list[str]:
    """For every pair of masks the results compare, one line plot of its sharing against each grid
    key with two or more values, per combination of the other grid values."""
    lines = []
    grid = sweep["grid"]
    pairs = mask_pairs(next((p["per_seed"][0] for p in points if p["per_seed"]), {}))
    for pair, (a, b, columns) in pairs.items():
        for key in (k for k in grid if len(grid[k]) >= 2):
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(points):
                if summaries[i] is not None and all(c in summaries[i] for c in columns):
                    rest = ",".join(f"{k}={value_text(v)}" for k, v in p["values"].items() if k != key)
                    groups.setdefault(rest, []).append(i)
            for rest, members in groups.items():
                xs, logx = _axis([points[i]["values"][key] for i in members])
                name = ("sharing" + (f"_{value_text(pair)}" if len(pairs) > 1 else "") + f"_vs_{key}"
                        + (f"-{rest}" if rest else "") + ".png")
                plots.line_plot(out / "figures" / name, xs,
                                {c: [mean(summaries[i][c]) * 100 for i in members] for c in columns},
                                {c: [std(summaries[i][c]) * 100 for i in members] for c in columns},
                                xlabel=key, ylabel="[%]", logx=logx,
                                title=f"Sharing between the {a} and {b} masks" + (f" ({rest})" if rest else ""))
                lines += [f"![sharing vs {key}](figures/{name})", ""]
    return lines


def write_report(out: str | Path) -> Path:
    """(Re)build report.md, figures/ and sweep_results.json of a sweep directory."""
    out = Path(out)
    sweep = read_json(out / SWEEP_FILE)
    experiment = sweep["experiment"]
    points = load_points(out, sweep)
    summaries = _summaries(points)
    write_json(out / "sweep_results.json", {
        "experiment": experiment, "preset": sweep["preset"], "set": sweep["set"], "grid": sweep["grid"],
        "seeds": sweep["seeds"],
        "points": [{"name": p["name"], "values": p["values"], "seeds": p["seeds"], "headline": s,
                    "aggregate": aggregate(p["per_seed"]) if p["per_seed"] else None}
                   for p, s in zip(points, summaries)]})
    keys = list(sweep["grid"])
    columns = list(next((s for s in summaries if s), {}))
    digits = {c: 1 if c.endswith(("[%]", "[s]")) else 3 for c in columns}
    rows = [[value_text(p["values"][k]) for k in keys] + [f"{len(p['seeds'])}/{sweep['seeds']}"]
            + [fmt(s.get(c), digits[c]) if s else "n/a" for c in columns] + [f"[{p['name']}]({p['name']}/)"]
            for p, s in zip(points, summaries)]
    fixed = ", ".join(f"{k}={value_text(v)}" for k, v in sweep["set"].items()) or "none"
    grid = "; ".join(f"{k} = " + ", ".join(value_text(v) for v in values) for k, values in sweep["grid"].items())
    text = [f"# Sweep: {experiment}, preset `{sweep['preset']}`", "",
            f"Grid: {grid or 'none'}; fixed: {fixed}; {sweep['seeds']} seed(s) per point. "
            "Values are mean ± std over the seeds that "
            "finished; each point is an ordinary run directory (`modmask report <point>` for its full report).",
            "", table(keys + ["seeds"] + columns + ["run"], rows), ""]
    incomplete = [f"{p['name']} ({len(p['seeds'])}/{sweep['seeds']} seeds)" for p in points
                  if len(p["seeds"]) < sweep["seeds"]]
    if incomplete:
        text += [f"Incomplete: {', '.join(incomplete)}; run the same `modmask sweep` command again to finish them.", ""]
    text += _sharing_figures(out, sweep, points, summaries)
    return save_report(out, text)
