"""Ordinary supervised pretraining of the network that the masks will analyse, resumable.

Adam with a constant learning rate (after an optional linear warm-up) and global-norm gradient
clipping, as the paper's defaults; or SGD with momentum and weight decay (the CIFAR ResNet, §2.6).
The learning rate can drop by a factor at given steps (`lr_drops`); warm-up and drops are
functions of the step alone, so a resumed run needs no scheduler state.
A checkpoint (model, optimiser, sampler state) is written every `checkpoint_every` steps; the
finished model is `checkpoints/pretrained.safetensors`.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from tqdm.auto import tqdm

from ..core.batches import to_device
from ..core.optim import adam
from ..runs import RunDir


def _save_partial(path, model, optimizer, batches, step) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "sampler": batches.state(), "step": step, "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def step_lr(step: int, lr: float, warmup: int = 0, lr_drops: tuple[int, ...] = (),
            lr_drop_factor: float = 0.1) -> float:
    """The learning rate of update `step` (0-based): linear warm-up over `warmup` steps, times
    lr_drop_factor for every drop step <= step."""
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return lr * scale * lr_drop_factor ** sum(step >= drop for drop in lr_drops)


def pretrain(model: nn.Module, batches, loss_fn: Callable, run: RunDir, *, steps: int,
             lr: float = 1e-3, grad_clip: float | None = 1.0, checkpoint_every: int = 2000,
             progress: bool = True, adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
             warmup: int = 0, optimizer: str = "adam", momentum: float = 0.9, weight_decay: float = 0.0,
             lr_drops: tuple[int, ...] = (), lr_drop_factor: float = 0.1, seed: int | None = None) -> nn.Module:
    """Train `model` in place (or load the finished checkpoint); returns it in eval mode.

    batches: endless (inputs, targets) with `state()` / `load_state()` (e.g. RandomBatches); inputs
    is a tensor or a tuple of the model's arguments. warmup: steps of linear learning-rate warm-up.
    optimizer: 'adam' (adam_betas, adam_eps) or 'sgd' (momentum, weight_decay). lr_drops: steps
    from which the learning rate is multiplied by lr_drop_factor once more (e.g. (32000, 48000)).
    seed: the model's own randomness (dropout) draws from torch's global generator, seeded with
    it for the training and restored afterwards; its state is checkpointed, so a resumed run
    draws what an uninterrupted one draws.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', not {optimizer!r}")
    final = run.path / "checkpoints" / "pretrained.safetensors"
    if final.exists():
        load_model(model, str(final))
        return model.eval()
    partial = run.file("checkpoints", "pretrain-partial.pt")
    optimizer = (adam(model.parameters(), lr=lr, betas=adam_betas, eps=adam_eps) if optimizer == "adam"
                 else torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay))
    start = 0
    if partial.exists():
        state = torch.load(partial, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state(state["sampler"])
        start = state["step"]
    device = next(model.parameters()).device
    model.train()
    bar = tqdm(range(start, steps), desc="pretrain", disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
            if start and "rng" in state:  # a partial checkpoint of before the seeding has none
                torch.set_rng_state(state["rng"])
        for step in bar:
            inputs, targets = to_device(next(batches), device)
            loss = loss_fn(model(*inputs) if isinstance(inputs, tuple) else model(inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if warmup or lr_drops:  # a function of the step alone, so a resumed run needs no scheduler state
                for group in optimizer.param_groups:
                    group["lr"] = step_lr(step, lr, warmup, lr_drops, lr_drop_factor)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if step % 200 == 0 or step == steps - 1:
                run.log({"phase": "pretrain", "step": step, "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                _save_partial(partial, model, optimizer, batches, step + 1)
    tmp = final.with_name(final.name + ".tmp")
    save_model(model, str(tmp))  # handles tied weights (one tensor stored once)
    os.replace(tmp, final)
    partial.unlink(missing_ok=True)
    return model.eval()

