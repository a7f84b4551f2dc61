"""Mask stages of a study, resumable: the mask files a finished stage left, else train, time, log,
checkpoint and save (atomically). Every experiment trains its masks through `mask_stages` (several
independent masks of one model: in one MaskTrainer when `execution.joint`, else one at a time) or
`mask_stage` (one mask); either way a stage is checkpointed every `checkpoint_every` steps when its
batches can save their state."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..core.mask_config import Execution, MaskConfig
from ..core.masks import read_metadata
from ..core.trained import TrainedMask
from ..core.training import LossFn, train_masks
from .rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One mask of a study: its file name, batches (endless; with state()/load_state() the stage
    checkpoints them too), loss and seed; `config`, if given, replaces the study's MaskConfig for
    this mask (e.g. another beta; masks trained together need the same steps and mode)."""

    name: str
    batches: Iterable
    loss_fn: LossFn
    seed: int
    label: str | None = None
    config: MaskConfig | None = None


def mask_stages(run: RunDir, model: nn.Module, stages: Sequence[Stage], config: MaskConfig,
                execution: Execution | None = None, *, progress: bool = True, checkpoint_every: int = 0,
                collate: Callable[[list], list] | None = None, log_every: int = 100,
                before_save: Callable[[TrainedMask], None] | None = None, **options) -> dict[str, TrainedMask]:
    """Every stage's mask (name -> TrainedMask): finished ones loaded (checked against `model`), the
    others trained together (execution.joint) or one at a time, timed as phase `masks:<name>,...`,
    logged to metrics.jsonl as phase `mask:<name>` and checkpointed to checkpoints/masks-partial.pt.
    options: MaskTrainer's (fixed_masks, init_logits, trainable), for every mask. collate: makes the
    masks' batches of a step one shape where they are not. before_save(trained) runs before a mask
    file is written, so whatever it saves too exists whenever the mask file does."""
    execution = execution or Execution()
    paths = {s.name: run.file("masks", f"{s.name}.safetensors") for s in stages}
    done = {s.name: TrainedMask.load(paths[s.name], model) for s in stages if paths[s.name].exists()}
    todo = [s for s in stages if s.name not in done]
    # in mode=train the model's own randomness (dropout) would be one stream for all masks of a pass
    together = execution.joint and all((s.config or config).mode == "eval" for s in todo)
    for group in ([todo] if together and todo else [[s] for s in todo]):
        trained = _train(run, model, group, config, execution, progress=progress, collate=collate,
                         checkpoint_every=checkpoint_every, log_every=log_every, options=options)
        for stage, mask in zip(group, trained):
            if before_save is not None:
                before_save(mask)
            mask.save(paths[stage.name])
            done[stage.name] = mask
        run.file("checkpoints", "masks-partial.pt").unlink(missing_ok=True)
    return {s.name: done[s.name] for s in stages}


def mask_diagnoses(run: RunDir) -> dict[str, dict]:
    """mask name -> the diagnosis its stage wrote into masks/<name>.safetensors (core/density.diagnose:
    settled, on target, function kept, with the fixes), for every mask file of the run that has one."""
    found = {}
    for path in sorted(run.file("masks").glob("*.safetensors")):
        diagnosis = read_metadata(path, "logits").get("diagnosis")
        if diagnosis:
            found[path.stem] = json.loads(diagnosis)
    return found


def mask_stage(run: RunDir, name: str, model: nn.Module, batches: Iterable, loss_fn: LossFn, config: MaskConfig,
               execution: Execution | None = None, *, seed: int, label: str | None = None,
               **options) -> TrainedMask:
    """masks/<name>.safetensors if it exists, else one mask trained and saved (mask_stages' options)."""
    return mask_stages(run, model, [Stage(name, batches, loss_fn, seed, label)], config, execution, **options)[name]


def _train(run: RunDir, model: nn.Module, stages: list[Stage], config: MaskConfig, execution: Execution, *,
           progress: bool, collate, checkpoint_every: int, log_every: int, options: dict) -> list[TrainedMask]:
    """The masks of `stages` trained in one MaskTrainer, resumed from and checkpointed to
    checkpoints/masks-partial.pt when every stage's batches can save their state."""
    names = [s.name for s in stages]
    partial = run.file("checkpoints", "masks-partial.pt")
    stateless = [s.name for s in stages if not hasattr(s.batches, "state")]
    resumable = checkpoint_every > 0 and not stateless
    if checkpoint_every > 0 and stateless:  # said before the long work, not found out after a kill
        log.warning("modmask: the batches of %s have no state() / load_state(), so the mask stage %s is not "
                    "checkpointed and an interrupted run trains it again from step 0 (use e.g. RandomBatches)",
                    ", ".join(stateless), ",".join(names))
    start, state = 0, None
    if resumable and partial.exists():
        saved = torch.load(partial, weights_only=False)  # our own file: numpy's noise state is a dict of ints
        if saved["names"] == names:
            start, state = saved["step"], saved["joint"]
            for s, sampler in zip(stages, saved["samplers"]):
                s.batches.load_state(sampler)

    def save(step: int, trainer_state: dict) -> None:
        tmp = partial.with_name(partial.name + ".tmp")
        torch.save({"names": names, "step": step, "joint": trainer_state,
                    "samplers": [s.batches.state() for s in stages]}, tmp)
        os.replace(tmp, partial)

    labels = ", ".join(s.label or s.name for s in stages)
    with run.timed("masks:" + ",".join(names) if len(stages) > 1 else f"mask:{names[0]}"):
        return train_masks(
            model, [(s.batches, s.loss_fn) for s in stages], [s.config or config for s in stages], execution,
            seeds=[s.seed for s in stages], progress=f"mask{'s' if len(stages) > 1 else ''} {labels}" if progress
            else False, log_every=log_every, on_log=lambda m, record: run.log({"phase": f"mask:{names[m]}", **record}),
            start=start, state=state, checkpoint=save if resumable else None, checkpoint_every=checkpoint_every,
            collate=collate, **options)
