"""How much do the + and * masks share, against network size and against beta? (paper §2.9)

Each point of the sweep is a full add/mul FNN study (addmul.run) in its own folder; points of the
beta sweep with the same network reuse one pretrained model, and with execution.joint their masks are
trained in one joint stage per network (3 masks per beta point). Recorded per point: the total
fraction of the + mask shared with the * mask (|M+ ∧ M*| / |M+|, and the same for *), the pooled
IoU (the original code's "shared" total) and the Full mask's accuracy on the mixed validation set.
With curves.enabled, each point also computes the curves over density of its masks' rankings
(addmul's), which the report shows per point; off by default, since the sweep asks about overlap and
the curves of every point would cost more than its masks on a CPU.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..core.curves import CurveConfig
from ..core.mask_config import Execution, MaskConfig
from . import addmul
from ..config import build
from ..runs import RunDir
from ..runs.stage import Stage, mask_stages

DESCRIPTION = "add/mul FNN: weight sharing against network size or beta (sweep)"

NAMED_SIZES = {"small": "400-400-200", "medium": "800-800-800-800", "big": "2000-2000-2000-2000",
               "huge": "4000-4000-4000-4000"}
PAPER_BETAS = (1e-5, 1.5e-5, 2e-5, 3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 8e-5, 9e-5, 1e-4, 1e-4, 1.1e-4, 1.25e-4,
               1.5e-4, 1.75e-4, 2e-4, 2.5e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 9e-4, 1e-3)


@dataclass(frozen=True)
class Config:
    sweep: str = "size"  # size | beta
    sizes: tuple[str, ...] = ("small", "medium", "big", "huge")  # names or "400-400-200"
    beta_sizes: tuple[str, ...] = ("medium", "big")  # networks of the beta sweep
    betas: tuple[float, ...] = PAPER_BETAS
    train_size: int = 1_000_000
    pretrain_steps: int = 20_000
    mask: MaskConfig = MaskConfig(steps=20_000, beta=1e-4)  # mask.beta: the size sweep's
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    checkpoint_every: int = 2000
    curves: CurveConfig = CurveConfig(enabled=False)  # each point's curves (addmul's); may change on resume


PRESETS = {
    "smoke": dict(sizes=("16-16", "32-32"), beta_sizes=("16-16",), betas=(1e-4, 1e-3), train_size=20_000,
                  pretrain_steps=100, mask=dict(steps=30), checkpoint_every=100,
                  curves=dict(densities=(0.01, 0.1, 0.5), random_draws=1)),
    "small": dict(sizes=("100-100-50", "200-200-100", "400-400-200"), beta_sizes=("200-200-100",),
                  betas=(3e-5, 1e-4, 3e-4, 1e-3), pretrain_steps=10_000, mask=dict(steps=3_000)),
    "paper": dict(),
}


def hidden(size: str) -> tuple[int, ...]:
    text = NAMED_SIZES.get(size, size)
    try:
        return tuple(int(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"size {size!r} is neither a name ({', '.join(NAMED_SIZES)}) nor widths like "
                         f"400-400-200") from None


def points(config: Config) -> list[dict]:
    if config.sweep == "size":
        return [{"size": s, "beta": config.mask.beta} for s in config.sizes]
    if config.sweep == "beta":
        return [{"size": s, "beta": b} for s in config.beta_sizes for b in config.betas]
    raise ValueError(f"sweep must be 'size' or 'beta', not {config.sweep!r}")


def _share_pretrained(source: RunDir, target: RunDir) -> None:
    """Hard-link a finished pretrained model into another point's folder (same network and seed)."""
    done = source.path / "checkpoints" / "pretrained.safetensors"
    link = target.file("checkpoints", "pretrained.safetensors")
    if done.exists() and not link.exists():
        os.link(done, link)


def _joint_beta_masks(studies: list, dirs: list[RunDir], sizes: list[str], run_dir: RunDir, seed: int,
                      progress: bool, device) -> None:
    """The beta sweep with execution.joint: for each network, the masks of all its beta points in one
    joint stage (3 masks per point, each with its point's beta, seed and batches, so each equals
    what the point trains alone up to float rounding), kept in the sweep's seed folder and linked
    into each point's masks/ folder, where addmul.run finds them finished."""
    for size in dict.fromkeys(sizes):
        group = [i for i, s in enumerate(sizes) if s == size]
        model, functions, _ = addmul.prepare(studies[group[0]], dirs[group[0]], seed, progress=progress,
                                             device=device)
        stages = [Stage(f"point-{i}-{f.name}", f.train.fork(), f.loss, seed * 1000 + index, label=f"{f.title} #{i}",
                        config=studies[i].mask)
                  for i in group for index, f in enumerate(functions)]
        mask_stages(run_dir, model, stages, studies[group[0]].mask, studies[group[0]].execution, progress=progress,
                    checkpoint_every=studies[group[0]].checkpoint_every)
        for i in group:
            for f in functions:
                link = dirs[i].file("masks", f"{f.name}.safetensors")
                if not link.exists():
                    os.link(run_dir.file("masks", f"point-{i}-{f.name}.safetensors"), link)


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=None) -> dict:
    base = build(addmul.Config, addmul.PRESETS["small"])
    sweep = points(config)
    studies = [dataclasses.replace(base, hidden=hidden(point["size"]), train_size=config.train_size,
                                   pretrain_steps=config.pretrain_steps, checkpoint_every=config.checkpoint_every,
                                   mask=dataclasses.replace(config.mask, beta=point["beta"]),
                                   execution=config.execution, curves=config.curves) for point in sweep]
    dirs = [run_dir.child(f"point-{index}-{point['size']}-beta{point['beta']:g}") for index, point in enumerate(sweep)]
    first_of_size = {}
    for point, point_dir in zip(sweep, dirs):
        first_of_size.setdefault(point["size"], point_dir)
    if config.sweep == "beta" and config.execution.joint:
        _joint_beta_masks(studies, dirs, [p["size"] for p in sweep], run_dir, seed, progress, device)
    results, timings = [], dict(run_dir.timings())  # the joint stages' phases, if any
    for point, study, point_dir in zip(sweep, studies, dirs):
        _share_pretrained(first_of_size[point["size"]], point_dir)
        outcome = addmul.run(study, point_dir, seed, progress=progress, device=device)
        total = outcome["masks"]["overlap"]["add|mul"][-1]
        results.append({**point, "shared_add": total["shared_add"], "shared_mul": total["shared_mul"],
                        "iou": total["iou"], "full_accuracy": outcome["accuracy"]["Full"]["iid"],
                        # random masks of the same per-layer sizes
                        "iou_chance": total["iou_chance"], "shared_add_chance": total["shared_add_chance"],
                        "shared_mul_chance": total["shared_mul_chance"],
                        "weights_add": total["count_add"], "weights_mul": total["count_mul"],
                        "removal_modes": outcome["removal_modes"],  # the point's accuracies, both modes
                        **({"curves": outcome["curves"]} if "curves" in outcome else {})})
        for phase, seconds in outcome["timings"].items():  # summed over the points
            timings[phase] = timings.get(phase, 0.0) + seconds
    return {"sweep": config.sweep, "points": results, "timings": timings}
