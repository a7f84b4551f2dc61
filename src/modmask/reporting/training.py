"""The report's word on mask training: did every stage settle, end at its target, keep its function?

Read from results["training"] of each seed (core/density.diagnose, written by every mask stage), so
a mask that did not converge or lost its function is said next to the numbers it produced, with
the fix."""

from __future__ import annotations

from .tables import table


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def training_section(summary: dict) -> list[str]:
    """Markdown lines: one row per mask (over the seeds) and every problem with its fix; [] when the
    results have no diagnoses (runs made before modmask recorded them)."""
    seeds = summary.get("per_seed") or [summary]
    numbers = summary.get("seed_list") or list(range(len(seeds)))
    diagnoses = [(n, s.get("training") or {}) for n, s in zip(numbers, seeds)]
    names = list(dict.fromkeys(name for _, d in diagnoses for name in d))
    if not names:
        return []
    rows, problems = [], []
    for name in names:
        found = [(seed, d[name]) for seed, d in diagnoses if name in d]
        settled = sum(bool(d.get("settled")) for _, d in found)
        lost = sum(bool(d.get("lost_function")) for _, d in found)
        density = sum(d["density"] for _, d in found) / len(found)
        target = found[0][1].get("target_density")
        flipped = max((d.get("flipped") or 0.0) for _, d in found)
        undecided = max((d.get("undecided") or 0.0) for _, d in found)
        loss = "; ".join(f"{d['loss']:.3g} / {d['full_loss']:.3g}" if d.get("full_loss") is not None else f"{d['loss']:.3g}"
                         for _, d in found)
        rows.append([name, f"{settled}/{len(found)}", f"{lost}/{len(found)}", _pct(density),
                     "-" if target is None else _pct(target), _pct(flipped), _pct(undecided), loss])
        problems += [f"- {name}, seed {seed}: {message}" for seed, d in found for message in d.get("messages", [])]
    text = ["## Mask training", "",
            "Whether each mask stage settled (at most 0.1% of its decisions flipped in each of its last three "
            "log intervals), lost its function (task loss over 3x the full model's on the same data and 0.25 "
            "above it) and ended at its target density; flipped and undecided (keep probability between 0.1 and "
            "0.9) at the last logged step, the worst seed.", "",
            table(["mask", "settled", "lost function", "density", "target", "flipped", "undecided",
                   "loss / full model's"], rows), ""]
    if problems:
        text += ["Problems, each with its fix:", "", *problems, ""]
    return text
