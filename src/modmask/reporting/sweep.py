"""Report of a sweep directory (launch/sweep.py): every grid point's results aggregated over
the seeds that finished (mean ± std), in sweep_results.json and a table in report.md; for the
add/mul study also the figures that need a sweep: weight sharing between the + and * masks against
network size (grid over `hidden`, paper figure 8) and against beta (grid over `beta`, figure 9).
"""

from __future__ import annotations

from pathlib import Path

from ..runs import SWEEP_FILE, aggregate, read_json, value_text, write_json


from .sharing import SHARING, sharing_plot
from .study import save_report
from .tables import fmt, table

# grid key -> (figure name, x-axis label, log scale) of the add/mul sharing figures
SHARING_AXES = {"hidden": ("size", "network (hidden sizes)", False), "beta": ("beta", "beta", True),
                "mask.beta": ("beta", "beta", True)}
GENERIC_COLUMNS = 8


def is_sweep(out: str | Path) -> bool:
    return (Path(out) / SWEEP_FILE).exists()


def _addmul_headline(results: dict) -> dict[str, float]:
    total = results["masks"]["overlap"]["add|mul"][-1]  # the last row pools all tensors
    accuracy = results["accuracy"]
    return {"Full acc. [%]": accuracy["Full"]["iid"], "+ on + [%]": accuracy["+"]["+"],
            "* on * [%]": accuracy["*"]["*"], "¬+ on + [%]": accuracy["¬+"]["+"], "¬* on * [%]": accuracy["¬*"]["*"],
            **{name: total[key] for name, key in SHARING.items()}}


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


def headline(experiment: str, results: dict) -> dict[str, float]:
    """The few numbers of one seed's results that the sweep table shows."""
    if experiment == "addmul":
        return _addmul_headline(results)
    rest = {k: v for k, v in results.items() if k != "timings"}
    return dict(list(_numbers(rest))[:GENERIC_COLUMNS])


def load_points(out: Path, sweep: dict) -> list[dict]:
    """Per point: name, values, the seeds that finished and their results."""
    points = []
    for point in sweep["points"]:
        seeds = [s for s in range(sweep["seeds"]) if (out / point["name"] / f"seed-{s}" / "results.json").exists()]
        per_seed = [read_json(out / point["name"] / f"seed-{s}" / "results.json") for s in seeds]
        points.append({**point, "seeds": seeds, "per_seed": per_seed})
    return points


def _summaries(experiment: str, points: list[dict]) -> list[dict]:
    """Mean and std over seeds of each point's headline numbers and time (None: no seed finished)."""
    out = []
    for p in points:
        rows = [{**headline(experiment, r), "time [s]": sum((r.get("timings") or {}).values())} for r in p["per_seed"]]
        out.append(aggregate(rows) if rows else None)
    return out


def _sharing_figures(out: Path, sweep: dict, points: list[dict], summaries: list[dict]) -> list[str]:
    """One line plot per swept axis (hidden, beta) and per combination of the other grid values."""
    lines = []
    grid = sweep["grid"]
    for key, (label, xlabel, logx) in SHARING_AXES.items():
        if len(grid.get(key, [])) < 2:
            continue
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(points):
            if summaries[i] is None:
                continue
            rest = ",".join(f"{k}={value_text(v)}" for k, v in p["values"].items() if k != key)
            groups.setdefault(rest, []).append(i)
        for rest, members in groups.items():
            xs = [value_text(points[i]["values"][key]) if key == "hidden" else points[i]["values"][key] for i in members]
            name = f"sharing_vs_{label}" + (f"-{rest}" if rest else "") + ".png"
            sharing_plot(out / "figures" / name, xs, [{k: summaries[i][m] for m, k in SHARING.items()} for i in members],
                         xlabel=xlabel, logx=logx, title="Sharing between the + and * masks" + (f" ({rest})" if rest else ""))
            lines += [f"![sharing vs {label}](figures/{name})", ""]
    return lines


def write_report(out: str | Path) -> Path:
    """(Re)build report.md, figures/ and sweep_results.json of a sweep directory."""
    out = Path(out)
    sweep = read_json(out / SWEEP_FILE)
    experiment = sweep["experiment"]
    points = load_points(out, sweep)
    summaries = _summaries(experiment, points)
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
            + [fmt(s[c], digits[c]) if s else "n/a" for c in columns] + [f"[{p['name']}]({p['name']}/)"]
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
    if experiment == "addmul":
        text += _sharing_figures(out, sweep, points, summaries)
    return save_report(out, text)
