"""Mask stages of a study, resumable: the mask file if a finished stage left it, else train, time,
log and save (atomically). Every experiment trains its masks through `mask_stage` (one mask) or
`mask_stages` (several independent masks of one model: in one pass when `config.joint`, with a
checkpoint every `checkpoint_every` steps inside the stage)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..core.joint import train_masks_jointly
from ..core.mask_config import MaskConfig
from ..core.training import LossFn, TrainedMask, train_mask
from .rundir import RunDir

log = logging.getLogger(__name__)


def mask_stage(run: RunDir, name: str, model: nn.Module, batches: Iterable, loss_fn: LossFn, config: MaskConfig,
               *, seed: int, progress: bool = True, label: str | None = None,
               before_save: Callable[[TrainedMask], None] | None = None, **options) -> TrainedMask:
    """masks/<name>.safetensors (checked against `model`) if it exists; else a mask trained with
    `config` and `seed` (options: train_mask's, e.g. fixed_masks), timed as phase `mask:<name>` and
    logged to metrics.jsonl under that phase. `before_save(trained)` runs before the mask file is
    written, so whatever it saves too exists whenever the mask file does."""
    path = run.file("masks", f"{name}.safetensors")
    if path.exists():
        return TrainedMask.load(path, model)
    with run.timed(f"mask:{name}"):
        trained = train_mask(model, batches, loss_fn, config, seed=seed,
                             progress=f"mask {label or name}" if progress else False,
                             on_log=lambda record: run.log({"phase": f"mask:{name}", **record}), **options)
    if before_save is not None:
        before_save(trained)
    trained.save(path)
    return trained


@dataclass
class Stage:
    """One mask of a study: its file name, batches (endless; with state()/load_state() a joint
    stage checkpoints them too), loss, seed and MaskTrainer options (e.g. fixed_masks); `config`,
    if given, replaces the study's MaskConfig for this mask (e.g. another beta; a joint stage needs
    the same steps and mode)."""

    name: str
    batches: Iterable
    loss_fn: LossFn
    seed: int
    options: dict = field(default_factory=dict)
    label: str | None = None
    config: MaskConfig | None = None


def mask_stages(run: RunDir, model: nn.Module, stages: Sequence[Stage], config: MaskConfig, *, progress: bool = True,
                checkpoint_every: int = 0, collate: Callable[[list], list] | None = None
                ) -> dict[str, TrainedMask]:
    """Every stage's mask (name -> TrainedMask): finished ones loaded, the others trained together
    in one pass (config.joint) or one at a time (mask_stage). A joint stage is timed as one phase,
    `masks:<name>,<name>,...`, and checkpointed to checkpoints/masks-partial.pt every
    `checkpoint_every` steps when every stage's batches can save their state. collate: makes the
    masks' batches of a step one shape where they are not (train_masks_jointly)."""
    # in mode=train the model's own randomness (dropout) would be one stream for all masks of a pass
    if not config.joint or len(stages) < 2 or config.mode == "train":
        return {s.name: mask_stage(run, s.name, model, s.batches, s.loss_fn, s.config or config, seed=s.seed,
                                   progress=progress, label=s.label, **s.options) for s in stages}
    paths = {s.name: run.file("masks", f"{s.name}.safetensors") for s in stages}
    done = {s.name: TrainedMask.load(paths[s.name], model) for s in stages if paths[s.name].exists()}
    todo = [s for s in stages if s.name not in done]
    if not todo:
        return done
    names = [s.name for s in todo]
    partial = run.file("checkpoints", "masks-partial.pt")
    stateless = [s.name for s in todo if not hasattr(s.batches, "state")]
    resumable = checkpoint_every > 0 and not stateless
    if checkpoint_every > 0 and stateless:  # said before the long work, not found out after a kill
        log.warning("modmask: the batches of %s have no state() / load_state(), so the joint stage %s is not "
                    "checkpointed and an interrupted run trains it again from step 0 (use e.g. RandomBatches)",
                    ", ".join(stateless), ",".join(names))
    start, state = 0, None
    if resumable and partial.exists():
        saved = torch.load(partial, weights_only=False)  # our own file: numpy's noise state is a dict of ints
        if saved["names"] == names:
            start, state = saved["step"], saved["joint"]
            for s, sampler in zip(todo, saved["samplers"]):
                s.batches.load_state(sampler)

    def save(step: int, joint_state: dict) -> None:
        tmp = partial.with_name(partial.name + ".tmp")
        torch.save({"names": names, "step": step, "joint": joint_state,
                    "samplers": [s.batches.state() for s in todo]}, tmp)
        os.replace(tmp, partial)

    with run.timed("masks:" + ",".join(names)):
        trained = train_masks_jointly(
            model, [(s.batches, s.loss_fn) for s in todo], [s.config or config for s in todo],
            seeds=[s.seed for s in todo],
            options=[s.options for s in todo], progress=f"masks {', '.join(s.label or s.name for s in todo)}"
            if progress else False, on_log=lambda i, record: run.log({"phase": f"mask:{names[i]}", **record}),
            start=start, state=state, checkpoint=save if resumable else None, checkpoint_every=checkpoint_every,
            collate=collate)
    for stage, mask in zip(todo, trained):
        mask.save(paths[stage.name])
    partial.unlink(missing_ok=True)
    return {s.name: done.get(s.name) or trained[names.index(s.name)] for s in stages}
