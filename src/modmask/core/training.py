"""Training one mask on one function's data (paper §1.4, §1.7).

The model is frozen and left unmodified; a flat vector of logits (one per masked weight, init 2.0)
is trained with Adam on   task loss + beta / b * sum(logits),   b being the pretraining batch size,
with K Gumbel-sigmoid samples per step, each on its own B/K slice of the batch.

Clean behaviour by default (a deliberate difference from the original code, see docs/deviations.md):
the frozen weights never get gradients and gradient clipping sees the mask gradients only, and a
stage runs exactly `steps` updates. `original_clipping=True` reproduces the original code, in which
the frozen weights' gradients accumulate over all steps and take part in global-norm clipping.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .gumbel import UniformSource, sample_masked_weights
from .batches import as_arguments, describe_output, split_batch, to_device, unpack_batch
from .masking import (call_sequential, call_vmap, choose_path, frozen_parameters, model_mode,
                      parameters_restored)
from .masks import Masks, check_fits
from .selection import ParameterFilter, owners, select_parameters

LossFn = Callable[[Any, Any], torch.Tensor]
LOGITS_FORMAT = "modmask.logits/1"


@dataclass
class TrainedMask:
    """The learned logits of one mask (parameter name -> [*shape]) and the training history."""

    logits: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)

    @property
    def masks(self) -> Masks:
        """The final binary mask, logit > 0."""
        return Masks.from_logits({n: l.detach().cpu() for n, l in self.logits.items()})  # analysis on the CPU

    def probs(self) -> torch.Tensor:
        """[N] keep probabilities sigmoid(logits) of all masked weights, flattened."""
        return torch.cat([torch.sigmoid(l.detach()).flatten() for l in self.logits.values()])

    def save(self, path: str | os.PathLike) -> None:
        """Atomic safetensors file of the logits by parameter name."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({n: t.detach().contiguous().cpu() for n, t in self.logits.items()}, str(tmp),
                  metadata={"format": LOGITS_FORMAT, "names": json.dumps(list(self.logits))})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "TrainedMask":
        """Read a logits file; with `model`, refuse one made for another model."""
        if not Path(path).exists():
            raise FileNotFoundError(f"logits file {path} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != LOGITS_FORMAT:
            raise ValueError(f"{path} is not a modmask logits file (format {meta.get('format')!r})")
        tensors = load_file(str(path))
        if model is not None:
            check_fits(tensors, model, source=str(path))
        return cls({n: tensors[n] for n in json.loads(meta["names"])})


def _batches_forever(batches: Iterable):
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the batch iterable yields no batch")


class MaskTrainer:
    """The state of one mask's training: logits, optimiser, noise source. `step(batch)` runs one
    update (the caller chooses the model's mode); `train_mask` is the loop around it. See
    `train_mask` for the arguments; beyond them: `init_logits` (name -> initial logits),
    `trainable` (name -> bool, weights that train jointly with the mask) and `fixed_masks`
    (name -> bool, tensors masked by a constant mask instead of a trained one)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, parameters: ParameterFilter = None,
                 biases: bool = False, norms: bool = True, k: int = 4, beta: float = 1e-4,
                 reg_batch_size: int | None = None, lr: float = 1e-2, init_logit: float = 2.0,
                 grad_clip: float | None = 1.0, seed: int = 0, path: str = "auto",
                 compiled: bool = False, original_clipping: bool = False,
                 init_logits: Mapping[str, torch.Tensor] | None = None,
                 trainable: Mapping[str, torch.Tensor] | None = None,
                 fixed_masks: Mapping[str, torch.Tensor] | None = None):
        if k < 1:
            raise ValueError(f"k must be positive (got k={k})")
        if trainable is not None and original_clipping:
            raise ValueError("trainable weights and original_clipping cannot be combined")
        self.model, self.loss_fn, self.k, self.beta = model, loss_fn, k, beta
        self.reg_batch_size, self.grad_clip, self.compiled = reg_batch_size, grad_clip, compiled
        self.requested_path = path
        self.path: str | None = None  # 'vmap' or 'sequential', chosen on the first batch
        fixed_masks = fixed_masks or {}
        names = [n for n in select_parameters(model, parameters, biases=biases, norms=norms) if n not in fixed_masks]
        if not names:
            raise ValueError("every selected parameter has a fixed mask: there is nothing to train")
        params = frozen_parameters(model)
        for name, mask in fixed_masks.items():  # e.g. CIFAR's output layer kept from the reference mask
            params[name] = params[name] * mask.to(params[name].device)
        self.device = params[names[0]].device
        # Matrices are kept transposed ([in, out] in memory): the gradient of a matrix used as
        # `x @ W.t()` arrives in that layout, so the backward reads it without a copy. Hugging Face's
        # Conv1D (GPT-2) already stores [in, out] and computes `x @ W`: its weights stay as they are.
        holders = owners(model)
        self.transposed = {n for n in names if params[n].dim() == 2 and type(holders.get(n)).__name__ != "Conv1D"}
        self.weights = {n: self._physical(n, params[n]) for n in names}
        self.others = {n: p for n, p in params.items() if n not in self.weights}
        self.logits = {n: (self._physical(n, init_logits[n]).to(w) if init_logits and n in init_logits
                           else torch.full_like(w, float(init_logit))).requires_grad_(True)
                       for n, w in self.weights.items()}
        trained = list(self.logits.values())
        # Joint training (the permuted-MNIST protocol): chosen weights train with the mask; the
        # others keep a zero gradient. The weights are copies, so the model itself is not changed.
        self.frozen_entries = {}
        for name, where in (trainable or {}).items():
            self.weights[name] = self._physical(name, params[name]).clone().requires_grad_(True)
            self.frozen_entries[name] = ~self._physical(name, where.to(torch.bool))
            trained.append(self.weights[name])
        self.optimizer = torch.optim.Adam(trained, lr=lr)
        self.clipped = list(trained)
        if original_clipping:  # the original code: weight gradients accumulate and are clipped too
            frozen = [*self.weights.values(), *self.others.values()]
            for tensor in frozen:
                tensor.requires_grad_(True)  # detached leaves or copies: the model's tensors get nothing
            self.clipped += frozen
        self.source = UniformSource(seed, self.device)

    def _physical(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor in the memory layout used for `name` (matrices transposed)."""
        return tensor.t().contiguous() if name in self.transposed else tensor

    def weights_by_name(self) -> dict[str, torch.Tensor]:
        """The masked tensors' current weights, in the model's layout (changed only if trainable)."""
        return {n: (w.detach().t() if n in self.transposed else w.detach()).contiguous()
                for n, w in self.weights.items()}

    def step(self, batch) -> dict:
        """One update on (inputs, targets) or on a dict of keyword arguments; returns the task loss
        and regulariser as tensors."""
        inputs, targets = unpack_batch(batch)
        chunks, batch_size = split_batch(to_device(as_arguments(inputs), self.device), self.k)
        targets = to_device(targets, self.device)
        masked = {}
        for name, weights in self.weights.items():
            sample = sample_masked_weights(self.logits[name], weights, self.source.draw(self.k, weights.shape),
                                           self.compiled)
            masked[name] = sample.transpose(-1, -2) if name in self.transposed else sample
        # the first step (path probe included) checks that the model's parameters stay in place
        with parameters_restored(self.model) if self.path is None else contextlib.nullcontext():
            if self.path is None:
                self.path = choose_path(self.model, masked, self.others, chunks, self.requested_path)
            run = call_vmap if self.path == "vmap" else call_sequential
            outputs = run(self.model, masked, self.others, chunks)
        task_loss = self._loss(outputs, targets)
        if not torch.isfinite(task_loss):
            raise FloatingPointError(f"mask training loss is {task_loss.item()}: check the loss "
                                     f"function and the data, or lower the learning rate")
        regulariser = self.beta / (self.reg_batch_size or batch_size) * sum(l.sum() for l in self.logits.values())
        self.optimizer.zero_grad(set_to_none=True)
        (task_loss + regulariser).backward()
        for name, frozen in self.frozen_entries.items():
            self.weights[name].grad[frozen] = 0.0
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip)
        self.optimizer.step()
        return {"loss": task_loss.detach(), "regulariser": regulariser.detach()}

    def _loss(self, outputs, targets) -> torch.Tensor:
        """loss_fn(outputs, targets), with errors that show what the model returned."""
        try:
            loss = self.loss_fn(outputs, targets)
        except (AttributeError, KeyError, IndexError, TypeError) as error:
            raise ValueError(f"loss_fn failed on the model's outputs {describe_output(outputs)} "
                             f"({type(error).__name__}: {error}); entries that were not tensors are None") from error
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor (the mean over the batch); got "
                             f"{describe_output(loss)}")
        return loss.reshape(())

    def density(self) -> float:
        """Fraction of masked weights with logit > 0."""
        kept = sum(int((l.detach() > 0).sum()) for l in self.logits.values())
        return kept / sum(l.numel() for l in self.logits.values())

    def result(self, history: list[dict] | None = None) -> TrainedMask:
        return TrainedMask({n: (l.detach().t() if n in self.transposed else l.detach()).contiguous().clone()
                            for n, l in self.logits.items()}, history or [])


def train_mask(model: nn.Module, batches: Iterable, loss_fn: LossFn, *, steps: int,
               mode: str = "eval", progress: bool | str = True, log_every: int = 100,
               on_log: Callable[[dict], None] | None = None, **options) -> TrainedMask:
    """Learn which weights of `model` the function behind `batches` needs.

    batches: iterable of (inputs, targets); inputs is a tensor [B, ...], a tuple of positional
        arguments or a dict of keyword arguments (tensors are split into k chunks along dim 0). A
        batch may also be a dict of keyword arguments alone (targets None). Re-iterated when exhausted.
    loss_fn(outputs [B, ...], targets) -> scalar, the mean over the batch. outputs has the model's
        structure (e.g. a ModelOutput: read `outputs.logits`); non-tensor entries (caches) are None,
        and a loss the model computes itself (`outputs.loss`) is [k], one per sample: take its mean.
    steps: number of updates. mode: the model's mode while training ('eval' as in the paper;
        'train' keeps e.g. random teacher forcing active). progress: False, True or a bar label.
    options (MaskTrainer):
        parameters / biases / norms: which tensors get a mask (see select_parameters);
        k: mask samples per step (default 4); beta, reg_batch_size: regulariser
        beta / b * sum(logits), b defaulting to the batch size; lr (1e-2), init_logit (2.0),
        grad_clip (1.0), seed; path: 'auto' (vmap, or sequential with a warning when the model
        cannot be batched), 'vmap' (error instead) or 'sequential'; compiled: fuse the elementwise
        mask work with torch.compile; original_clipping: emulate the original code's clipping.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive (got {steps})")
    trainer = MaskTrainer(model, loss_fn, **options)
    history: list[dict] = []
    bar = tqdm(total=steps, desc=progress if isinstance(progress, str) else "mask",
               disable=not progress, leave=False)
    with model_mode(model, mode):
        for step, batch in zip(range(steps), _batches_forever(batches)):
            try:
                losses = trainer.step(batch)
            except FloatingPointError as error:
                raise FloatingPointError(f"step {step}: {error}") from None
            if step % log_every == 0 or step == steps - 1:
                record = {"step": step, "loss": losses["loss"].item(),
                          "regulariser": losses["regulariser"].item(),
                          "density": trainer.density()}
                history.append(record)
                if on_log:
                    on_log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", density=f"{record['density']:.3f}")
            bar.update()
    bar.close()
    return trainer.result(history)
