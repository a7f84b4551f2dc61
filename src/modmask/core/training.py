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
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from .mask_config import MASK_SETTINGS, MaskConfig
from .gumbel import UniformSource, keep_thresholds, sample_masked_weights
from .batches import as_arguments, describe_output, split_batch, to_device, unpack_batch
from .masking import (call_sequential, call_vmap, choose_path, frozen_parameters, model_mode,
                      parameters_restored)
from .masks import Masks, check_fits
from .memory import (as_dtype, autocast, check_fits_device, divisors, fit_samples_per_pass, free_memory,
                     memory_plan)
from .optim import adam
from .selection import ParameterFilter, owners, select_parameters

LossFn = Callable[[Any, Any], torch.Tensor]
LOGITS_FORMAT = "modmask.logits/1"
log = logging.getLogger(__name__)


@dataclass
class TrainedMask:
    """The learned logits of one mask (parameter name -> [*shape]) and the training history; with
    weights that trained jointly with the mask (MaskTrainer's `trainable`), also the masked tensors'
    final weights (name -> [*shape]), which saving leaves out."""

    logits: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def masks(self) -> Masks:
        """The final binary mask, logit > 0."""
        return Masks.from_logits({n: l.detach().cpu() for n, l in self.logits.items()})  # analysis on the CPU

    def at_density(self, density: float, per_layer: bool = False) -> Masks:
        """The mask of a chosen size: the top `density` fraction of the logits, kept regardless of
        their sign (so masks of different functions can be compared at equal size).

        Pooled (default): round(density * N) weights of all N masked weights, highest logits first,
        so tensors keep different fractions; per_layer: round(density * n) in every tensor of n.
        Ties are broken by position: the earlier tensor (in `logits` order), then the lower flat index.
        """
        if not 0 < density <= 1:  # also refuses NaN
            raise ValueError(f"density must be in (0, 1] (a fraction of the masked weights), got {density}")
        logits = {n: l.detach().cpu().flatten() for n, l in self.logits.items()}

        def top(values: torch.Tensor) -> torch.Tensor:
            # A stable sort of the negated logits keeps equal logits in position order.
            keep = torch.zeros(len(values), dtype=torch.bool)
            keep[torch.sort(-values.double(), stable=True).indices[:math.floor(density * len(values) + 0.5)]] = True
            return keep

        if per_layer:
            kept = {n: top(v) for n, v in logits.items()}
        else:
            flat = top(torch.cat(list(logits.values())))
            kept = dict(zip(logits, flat.split([len(v) for v in logits.values()])))
        return Masks({n: kept[n].view(self.logits[n].shape) for n in logits})

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


def _rows(tensor, batch_size: int, start: int, stop: int):
    """Rows start..stop-1 of a target tensor [B, ...] (other values unchanged)."""
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if tensor.dim() == 0 or tensor.shape[0] != batch_size:
        raise ValueError(f"with samples_per_pass below k the targets are split along dim 0 like the inputs, but a "
                         f"target tensor has shape {tuple(tensor.shape)} for batch size {batch_size}; give targets "
                         f"[B, ...] or use samples_per_pass=k")
    return tensor[start:stop]


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
    (name -> bool, tensors masked by a constant mask instead of a trained one). After the first
    step, `plan` is its MemoryPlan and `samples_per_pass` a number ('auto' resolved)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, parameters: ParameterFilter = None,
                 biases: bool = False, norms: bool = True, k: int = 4, beta: float = 1e-4,
                 reg_batch_size: int | None = None, lr: float = 1e-2, init_logit: float = 2.0,
                 grad_clip: float | None = 1.0, seed: int = 0, path: str = "auto",
                 compiled: bool = False, original_clipping: bool = False,
                 init_logits: Mapping[str, torch.Tensor] | None = None,
                 trainable: Mapping[str, torch.Tensor] | None = None,
                 fixed_masks: Mapping[str, torch.Tensor] | None = None,
                 samples_per_pass: int | str | None = None, precision: str = "fp32"):
        if k < 1:
            raise ValueError(f"k must be positive (got k={k})")
        if samples_per_pass not in (None, "auto") and not (
                isinstance(samples_per_pass, int) and samples_per_pass in divisors(k)):
            raise ValueError(f"samples_per_pass must divide k={k} (one of {divisors(k)}) or be 'auto', "
                             f"not {samples_per_pass!r}")
        self.samples_per_pass = samples_per_pass or k  # 'auto' is resolved on the first batch
        self.dtype = as_dtype(precision)
        self.plan = None  # the MemoryPlan, made on the first batch
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
        self.optimizer = adam(trained, lr=lr)
        self.clipped = list(trained)
        if original_clipping:  # the original code: weight gradients accumulate and are clipped too
            frozen = [*self.weights.values(), *self.others.values()]
            for tensor in frozen:
                tensor.requires_grad_(True)  # detached leaves or copies: the model's tensors get nothing
            self.clipped += frozen
        self.original_clipping = original_clipping
        autocast(self.device, self.dtype)  # bf16 on a device without it fails here, not at the first step
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
        and regulariser as tensors.

        The k samples run in groups of `samples_per_pass`, each group's masked copies made when it
        runs and freed after its backward; the gradients add up to those of one pass over all k
        (same noise; each group's loss weighted by its share of the batch, exact for a loss that
        is a mean over examples). Clipping and the update follow the last group.
        """
        inputs, targets = unpack_batch(batch)
        chunks, batch_size = split_batch(to_device(as_arguments(inputs), self.device), self.k)
        targets = to_device(targets, self.device)
        if self.plan is None:
            self._plan_memory(chunks)
        noise = self.source.reserve(self.k, [w.shape for w in self.weights.values()])
        self.optimizer.zero_grad(set_to_none=True)
        # groups share the per-weight thresholds of this step (int16, 2 bytes a weight)
        thresholds = ({n: keep_thresholds(l) for n, l in self.logits.items()} if self.samples_per_pass < self.k
                      else {})
        task_loss = 0.0
        # the first step (path probe included) checks that the model's parameters stay in place
        with parameters_restored(self.model) if self.path is None else contextlib.nullcontext():
            for lo in range(0, self.k, self.samples_per_pass):
                loss = self._group_loss(noise, thresholds, chunks, targets, batch_size, lo, lo + self.samples_per_pass)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"mask training loss is {loss.item()}: check the loss "
                                             f"function and the data, or lower the learning rate")
                loss.backward()
                task_loss = task_loss + loss.detach()
        regulariser = self.beta / (self.reg_batch_size or batch_size) * sum(l.sum() for l in self.logits.values())
        regulariser.backward()
        for name, frozen in self.frozen_entries.items():
            self.weights[name].grad[frozen] = 0.0
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip)
        self.optimizer.step()
        return {"loss": task_loss, "regulariser": regulariser.detach()}

    def _masked(self, noise, thresholds, lo: int, hi: int, low: torch.dtype | None) -> dict[str, torch.Tensor]:
        """Samples lo..hi-1 of every masked tensor, [hi - lo, *shape], in the model's layout."""
        masked = {}
        for index, (name, weights) in enumerate(self.weights.items()):
            # under bf16, vectors (biases, norms) stay fp32 on the sequential path: CPU layer norm
            # refuses a bf16 weight with an fp32 input, and autocast casts them where it must
            dtype = low if low and (self.path == "vmap" or weights.dim() >= 2) else None
            sample = sample_masked_weights(self.logits[name], weights, noise.take(index, lo, hi), self.compiled, dtype,
                                           thresholds.get(name))
            masked[name] = sample.transpose(-1, -2) if name in self.transposed else sample
        return masked

    def _group_loss(self, noise, thresholds, chunks: tuple, targets, batch_size: int, lo: int, hi: int) -> torch.Tensor:
        """The task loss of samples lo..hi-1 on their chunks, times their share of the batch."""
        low = self.dtype if self.dtype != torch.float32 else None
        group = chunks if hi - lo == self.k else _samples(chunks, lo, hi)
        if self.path is None and low:  # the probe compares the paths in fp32 (bf16 roundings differ)
            with torch.no_grad():
                self.path = choose_path(self.model, self._masked(noise, thresholds, lo, hi, None), self.others, group,
                                        self.requested_path)
            if not self.original_clipping:
                self.others = low_precision(self.others, low, self.path)
        masked = self._masked(noise, thresholds, lo, hi, low)
        if self.path is None:
            self.path = choose_path(self.model, masked, self.others, group, self.requested_path)
        run = call_vmap if self.path == "vmap" else call_sequential
        with autocast(self.device, self.dtype):
            outputs = run(self.model, masked, self.others, group)
        return self._share_loss(fp32_outputs(outputs) if low else outputs, targets, batch_size, lo, hi)

    def _share_loss(self, outputs, targets, batch_size: int, lo: int, hi: int) -> torch.Tensor:
        """The task loss of samples lo..hi-1 (their outputs, the batch's targets), times their share of the batch."""
        if hi - lo == self.k:
            return self._loss(outputs, targets)
        rows = batch_size // self.k
        return self._loss(outputs, tree_map(lambda t: _rows(t, batch_size, lo * rows, hi * rows), targets)) \
            * ((hi - lo) / self.k)

    def _plan_memory(self, chunks) -> None:
        """Make the memory plan on the first batch (its chunks from split_batch), resolve
        samples_per_pass='auto', log the plan in one line and, on a GPU, stop if it cannot fit."""
        plan = memory_plan(self.model, k=self.k, chunks=chunks, parameters=list(self.logits), dtype=self.dtype,
                           samples_per_pass=self.k if self.samples_per_pass == "auto" else self.samples_per_pass)
        free = free_memory(self.device)
        if self.samples_per_pass == "auto":
            self.samples_per_pass = fit_samples_per_pass(plan, free)
            plan = plan.with_settings(samples_per_pass=self.samples_per_pass)
        self.plan = plan
        log.info("modmask: %s", plan.summary())
        check_fits_device(plan, self.device, free)

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
                            for n, l in self.logits.items()}, history or [],
                           self.weights_by_name() if self.frozen_entries else None)


def low_precision(others: dict[str, torch.Tensor], low: torch.dtype, path: str) -> dict[str, torch.Tensor]:
    """bf16 copies of the unmasked tensors: under vmap a bias kept in fp32 would promote every
    linear layer's bf16 output back to fp32 (autocast does not see the add); on the sequential
    path vectors stay fp32 (CPU layer norm refuses a bf16 weight with an fp32 input)."""
    return {n: p.to(low) if p.is_floating_point() and (path == "vmap" or p.dim() >= 2) else p for n, p in others.items()}


def fp32_outputs(outputs: Any) -> Any:
    """The model's outputs with every float tensor in fp32 (the loss is computed in fp32)."""
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, outputs)


def _samples(chunks, lo: int, hi: int):
    """Mask samples lo..hi-1 of split arguments: every split tensor [k, B/k, ...] -> [hi-lo, B/k, ...]."""
    args, kwargs = chunks
    take = lambda a: a[lo:hi] if isinstance(a, torch.Tensor) and a.dim() else a  # noqa: E731
    return tuple(take(a) for a in args), {n: take(a) for n, a in kwargs.items()}


def train_mask(model: nn.Module, batches: Iterable, loss_fn: LossFn, config: MaskConfig | None = None, *,
               progress: bool | str = True, log_every: int = 100, on_log: Callable[[dict], None] | None = None,
               **options) -> TrainedMask:
    """Learn which weights of `model` the function behind `batches` needs.

    batches: iterable of (inputs, targets); inputs is a tensor [B, ...], a tuple of positional
        arguments or a dict of keyword arguments (tensors are split into k chunks along dim 0). A
        batch may also be a dict of keyword arguments alone (targets None). Re-iterated when exhausted.
    loss_fn(outputs [B, ...], targets) -> scalar, the mean over the batch. outputs has the model's
        structure (e.g. a ModelOutput: read `outputs.logits`); non-tensor entries (caches) are None,
        and a loss the model computes itself (`outputs.loss`) is [k], one per sample: take its mean.
    config: a MaskConfig (steps, k, beta, lr, grad_clip, ..., see there); any of its fields given as
        keyword options override it, e.g. train_mask(model, batches, loss_fn, steps=2000, beta=1e-4).
    progress: False, True or a bar label. on_log(record) receives the record logged every
        `log_every` steps (step, loss, regulariser, density).
    options beyond MaskConfig's fields go to MaskTrainer: seed, init_logits, trainable, fixed_masks.
    Two of MaskConfig's fields in detail:
        samples_per_pass: how many of the k samples run together (a divisor of k, default k; 'auto':
        the most that fit the device's free memory by the memory plan). Fewer hold fewer masked
        copies (extra memory samples_per_pass x |W| instead of k x |W|) and give the same result
        (same noise, gradients summed over the groups; exact for a loss that is a mean over
        examples, while the model's own randomness, e.g. dropout, is drawn per group);
        precision: 'fp32' (default) or 'bf16': the model's forward under torch.autocast, masked
        copies and unmasked tensors in bf16, logits, Adam and the regulariser in fp32.
    The memory plan (modmask.memory_plan) is logged in one line before the first step; on a GPU
    a plan that does not fit stops there with a MemoryError that names the settings that would.
    """
    settings = {n: options.pop(n) for n in MASK_SETTINGS if n in options}
    config = dataclasses.replace(config, **settings) if config else MaskConfig(**settings)
    steps, mode = config.steps, config.mode
    trainer = MaskTrainer(model, loss_fn, **config.trainer_options(), **options)
    history: list[dict] = []
    bar = tqdm(total=steps, desc=progress if isinstance(progress, str) else "mask",
               disable=not progress, leave=False)
    # in train mode the model's own randomness (dropout) draws from torch's global generator:
    # seeded from the mask's seed for the stage, the caller's state restored afterwards
    device = trainer.device
    with model_mode(model, mode), torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                                        enabled=mode == "train"):
        if mode == "train":
            torch.manual_seed(options.get("seed", 0))
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
