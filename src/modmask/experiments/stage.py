"""One mask stage of a study, resumable: the mask file if a finished stage left it, else train,
time, log and save (atomically). Every experiment trains its masks through `mask_stage`."""

from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from ..core.mask_config import MaskConfig
from ..core.training import LossFn, TrainedMask, train_mask
from ..runs import RunDir


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
