"""Training masks of one frozen model (paper §1.4, §1.7): one trainer for M >= 1 masks.

Mask m has one logit per masked weight (init 2.0); the logits of all M masks are stacked, one leaf
per tensor [M, *shape], and trained with Adam on

    task loss_m + beta_m / b_m * sum(logits_m),    b_m the batch size (or reg_batch_size),

with K Gumbel-sigmoid samples per step, each on its own B/K slice of mask m's batch. The M x K
masked copies go through one call of the model, yet every mask keeps its own batches, loss, beta,
lr, clipping and noise, so M masks trained together are the masks each would be alone; a single
mask is M = 1, on the same code.

    trainer = MaskTrainer(model, loss_fn, MaskConfig(k=4), Execution(), seed=0).prepare([batch])
    trainer.step([batch])          # one batch per mask; `train_masks` is the loop around it

Everything that depends only on the model and the first batches (the vmap or sequential path, the
memory plan, the sample groups, the bf16 copies of the unmasked tensors) is resolved once by
`prepare`; `step` then only does the work. Clean behaviour by default (docs/deviations.md): the
frozen weights never get gradients, clipping sees each mask's gradients only, and a stage runs
exactly `steps` updates; `original_clipping=True` reproduces the original code (one mask only), in
which the frozen weights' gradients accumulate over all steps and take part in the clipping.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from .batches import (as_arguments, describe_output, joined, split_batch, split_outputs, target_rows, to_device,
                      unpack_batch)
from .density import DensityControl, Decisions, diagnose, settled
from .gumbel import UniformSource, keep_thresholds, sample_masked_weights, straight_through_samples
from .mask_config import Execution, MaskConfig, settings_from
from .masking import call_sequential, call_vmap, choose_path, frozen_parameters, model_mode, parameters_restored
from .masks import check_fits
from .removal import Reference, as_reference, channel_first, offsets, removal_modes
from .memory import (as_dtype, autocast, check_fits_device, divisors, fit_samples_per_pass, fp32_outputs, free_memory,
                     low_precision, memory_plan, transposed_matrices)
from .optim import adam
from .selection import select_parameters
from .trained import TrainedMask
from .units import broadcast_names, plan_units

LossFn = Callable[[Any, Any], torch.Tensor]
log = logging.getLogger(__name__)


class MaskTrainer:
    """The training state of M masks of one frozen model: stacked logits, one Adam, M noise sources.

    loss_fn, config, seed: one for every mask, or a sequence with one per mask (M is their length).
    The masks share k, the masked tensors (parameters, biases, norms) and the mode. execution: how
    steps run (shared). init_logits: name -> [*shape] starting logits (every mask). fixed_masks:
    name -> bool [*shape], tensors masked by a constant mask instead of a trained one. trainable:
    name -> bool [*shape], weights that train together with a single mask (the permuted-MNIST
    protocol; the model itself is not changed). reference: mean removal's batches (or a Reference from
    mean_inputs), the same for every mask (default: each mask's own first batch). After `prepare`: `path`, `plan` (the MemoryPlan)
    and `samples_per_pass` (a number)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | Sequence[LossFn], config: MaskConfig | Sequence[MaskConfig]
                 | None = None, execution: Execution | None = None, *, seed: int | Sequence[int] = 0,
                 init_logits: Mapping[str, torch.Tensor] | None = None,
                 trainable: Mapping[str, torch.Tensor] | None = None,
                 fixed_masks: Mapping[str, torch.Tensor] | None = None, reference=None):
        self.loss_fns, self.configs, self.seeds = _per_mask(loss_fn, config or MaskConfig(), seed)
        self.model, self.execution = model, execution or Execution()
        first = self.configs[0]
        self.k, self.dtype = first.k, as_dtype(self.execution.precision)
        _check_shared(self.configs, trainable)
        if isinstance(self.execution.samples_per_pass, int) and self.execution.samples_per_pass not in divisors(self.k):
            raise ValueError(f"samples_per_pass must divide k={self.k} (one of {divisors(self.k)}) or be 'auto', "
                             f"not {self.execution.samples_per_pass!r}")
        fixed_masks = fixed_masks or {}
        for label, given in (("fixed_masks", fixed_masks), ("trainable", trainable or {}),
                             ("init_logits", init_logits or {})):
            check_fits(given, model, source=label, fix=f"give {label} by parameter name, each in its parameter's "
                                                       f"shape as the model holds it")
        # the tensors trained here (weight by weight or by unit); the memory plan reads them again
        self.names = names = [n for n in select_parameters(model, first.parameters, biases=first.biases,
                                                           norms=first.norms) if n not in fixed_masks]
        if not names:
            raise ValueError("every selected parameter has a fixed mask: there is nothing to train")
        params = frozen_parameters(model)
        weight_names, self.units = plan_units(model, names, first.granularity, first.heads)
        if self.units and (trainable or first.original_clipping or init_logits):
            raise ValueError("unit masks (granularity other than 'weight') train without trainable weights, "
                             "original_clipping or init_logits")
        # heads and neurons multiply their projection's input ("gates"), so their tensors are never copied
        gated = {s.name for u in self.units if u.gate for s in u.spans}
        self.broadcast = broadcast_names(self.units)
        modes = removal_modes(first.removal, [*names, *fixed_masks])
        self.mean_removed = [n for n in (*names, *fixed_masks) if modes[n] == "mean" and n not in gated]
        self.gate_means = {u.gate[0]: f"{u.gate[0]}.weight" for u in self.units
                           if u.gate and modes[f"{u.gate[0]}.weight"] == "mean"}  # module -> its weight's E[x]
        self.full = {n: params[n] for n in self.mean_removed}  # the model's own tensors (mean removal's W)
        self.dims = {n: p.dim() for n, p in params.items()}
        self.reference, self.mean = reference, None  # mean removal's batches; their Reference after prepare
        self._rows: dict[int, Reference] = {}  # self.mean repeated for calls of that many samples (_mean_rows)
        for name, mask in fixed_masks.items():  # e.g. CIFAR's output layer kept from the reference mask
            params[name] = params[name] * mask.to(params[name].device)
        self.device = params[names[0]].device
        # matrices kept transposed (not Hugging Face's Conv1D, already [in, out]); memory_plan counts the same
        self.transposed = transposed_matrices(model, weight_names)
        self.weights = {n: self._physical(n, params[n]) for n in weight_names}
        self.others = {n: p for n, p in params.items() if n not in self.weights}
        self.logits = {n: torch.stack([self._physical(n, init_logits[n]).to(w) if init_logits and n in init_logits
                                       else torch.full_like(w, float(c.init_logit)) for c in self.configs])
                       .requires_grad_(True) for n, w in self.weights.items()}
        for unit in self.units:  # one logit per unit, [M, count], after the weights' (their noise comes after too)
            self.logits[unit.name] = torch.stack([torch.full((unit.count,), float(c.init_logit), device=self.device)
                                                  for c in self.configs]).requires_grad_(True)
        # what one entry of each logits tensor stands for in the regulariser and the density: 1 weight, or a unit's
        self.entry_weights = [1.0] * len(self.weights) + [float(u.covered) for u in self.units]
        # Trainable weights are copies, so the model is not changed; their frozen entries get no update.
        self.frozen_entries = {}
        for name, where in (trainable or {}).items():
            self.weights[name] = self._physical(name, params[name]).clone().requires_grad_(True)
            self.frozen_entries[name] = ~self._physical(name, where.to(torch.bool))
        # Adam over the stacks: one parameter group per mask, whose parameters are views of mask m's
        # slices, so each mask steps exactly as its own Adam would (fused: one kernel per group).
        self._views = [[logits.detach()[m] for logits in self.logits.values()] for m in range(len(self.configs))]
        extra = [self.weights[n] for n in self.frozen_entries]  # trained with mask 0, the only one
        self.optimizer = adam([{"params": views + (extra if m == 0 else []), "lr": c.lr}
                               for m, (views, c) in enumerate(zip(self._views, self.configs))])
        self.clipped_with_first = list(extra)
        if first.original_clipping:  # the original code: weight gradients accumulate and are clipped too
            frozen = [*self.weights.values(), *self.others.values()]
            for tensor in frozen:
                tensor.requires_grad_(True)  # detached leaves or copies: the model's tensors get nothing
            self.clipped_with_first += frozen
        autocast(self.device, self.dtype)  # bf16 on a device without it fails here, not at the first step
        self.sources = [UniformSource(s, self.device) for s in self.seeds]
        self.control = DensityControl(self.configs, [l[0].numel() for l in self.logits.values()], self.device,
                                      self.entry_weights)
        self.decisions = Decisions(list(self.logits.values()))
        self.full_losses: list[float | None] = [None] * self.masks  # the unmasked model's, on the first batches
        self.steps_done = 0
        self.path: str | None = None
        self.plan = self.samples_per_pass = self.forward_others = None

    @property
    def masks(self) -> int:
        """M, the number of masks."""
        return len(self.configs)

    def _physical(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor in the memory layout used for `name` (matrices transposed)."""
        return tensor.t().contiguous() if name in self.transposed else tensor

    def _model_layout(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.detach().transpose(-1, -2) if name in self.transposed else tensor.detach()).contiguous()

    @torch.enable_grad()  # a caller inside torch.no_grad() clearly wants the masks trained
    def prepare(self, batches: Sequence) -> "MaskTrainer":
        """Resolve, on the first step's batches (one per mask), what depends only on the model and
        the batches: the memory plan (logged; 'auto' sample groups fitted to the free memory; on a
        GPU a plan that cannot fit stops here), the vmap or sequential path (a probe compares the
        two on the first sample group) and the bf16 copies of the unmasked tensors. Returns self."""
        parts = self._parts(batches)
        chunks = joined([p[0] for p in parts], 0, self.k, self.k)
        groups = self.execution.samples_per_pass
        fixed = self.k if groups in (None, "auto") else groups
        first = self.configs[0]
        plan = dataclasses.replace(memory_plan(self.model, k=self.masks * self.k, chunks=chunks, dtype=self.dtype,
                                               path=self.execution.path, parameters=self.names,
                                               granularity=first.granularity, heads=first.heads,
                                               samples_per_pass=self.masks * fixed),
                                   masks=self.masks)
        free = free_memory(self.device)
        self.samples_per_pass = fit_samples_per_pass(plan, free) if groups == "auto" else fixed
        self.plan = plan.with_settings(samples_per_pass=self.masks * self.samples_per_pass)
        log.info("modmask: %s", self.plan.summary())
        check_fits_device(self.plan, self.device, free)
        group = joined([p[0] for p in parts], 0, self.samples_per_pass, self.k)
        full = self._unmasked(self.masks * self.samples_per_pass)
        with parameters_restored(self.model), torch.no_grad():  # the paths compared in fp32
            self.path = choose_path(self.model, full, self.others, group, self.execution.path)
        low = self.dtype != torch.float32 and not self.configs[0].original_clipping
        self.forward_others = low_precision(self.others, self.dtype, self.path) if low else self.others
        if self.mean_removed or self.gate_means:
            self.mean = self._mean_reference(batches)
        self.full_losses = self._full_losses(batches)
        return self

    def _mean_reference(self, batches: Sequence) -> Reference:
        """Mean removal's Reference, each mask's means ([M, ...]) read through the unmasked model on
        `reference` (the same for every mask), or by default on the mask's own first batch."""
        names = [*self.mean_removed, *self.gate_means.values()]
        given = None if self.reference is None else as_reference(self.model, self.reference, names,
                                                                 self.configs[0].mode)
        references = [given or as_reference(self.model, [batch], names, self.configs[0].mode) for batch in batches]
        return references[0].stacked(references)

    def _mean_rows(self, rows: int) -> Reference:
        """The Reference with each mask's means repeated for its samples in a call of `rows` samples (mask
        m's are rows m rows/M ...), made once per size: a step reuses it for every group."""
        if rows not in self._rows:
            self._rows[rows] = self.mean.repeated(rows // self.masks)
        return self._rows[rows]

    def _shifts(self, masked: dict, rows: int) -> dict:
        """Mean removal: each mean-removed tensor's offset folded into its layer's bias (which then joins
        `masked`, [rows, ...]) or returned as a shift of its layer's output or input (removal.offsets)."""
        if self.mean is None or not self.mean_removed:
            return {}
        current = {n: masked[n] if n in masked else self.others[n] for n in self.mean_removed}
        biases, shifts = offsets(self._mean_rows(rows).only(self.mean_removed), self.full, current,
                                 {**self.forward_others, **masked})
        masked.update({n: b if b.dim() > self.dims[n] else b.expand(rows, *b.shape) for n, b in biases.items()})
        return shifts

    def _unmasked(self, rows: int) -> dict[str, torch.Tensor]:
        """The trained tensors with every weight kept, [rows, *shape] in the model's layout (views): the
        weights' and the rows' and columns'; with heads and neurons only, one tensor, since a call
        needs one with a sample dim."""
        tensors = {**{n: self._model_layout(n, w) for n, w in self.weights.items()},  # (trainable: their values now)
                   **{n: self.others[n] for n in self.broadcast}}
        if not tensors:
            name = next(iter(self.others))
            tensors = {name: self.others[name]}
        return {n: t.expand(rows, *t.shape) for n, t in tensors.items()}

    @torch.no_grad()
    def _full_losses(self, batches: Sequence) -> list[float]:
        """Each mask's task loss on its batch with every trained weight kept (fixed masks applied):
        what a mask that keeps its function should come near (the stage's diagnosis). One call of
        the model on the chosen path, drawing no randomness the stage sees."""
        parts = self._parts(batches)
        chunks = joined([p[0] for p in parts], 0, self.k, self.k)
        full = self._unmasked(self.masks * self.k)
        shifts = self._shifts(full, self.masks * self.k)  # (only fixed masks remove anything here)
        run = call_vmap if self.path == "vmap" else call_sequential
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            outputs = run(self.model, full, self.others, chunks, shifts, self.mean and channel_first(self.mean))
        rows = [size for _, _, size in parts]
        return [float(self._loss(m, output, targets)) for m, (output, (_, targets, _)) in
                enumerate(zip(split_outputs(outputs, rows, self.k), parts))]

    @torch.enable_grad()
    def step(self, batches: Sequence) -> list[dict]:
        """One update of every mask, mask m on batches[m] ((inputs, targets) or a dict of keyword
        arguments); returns each mask's task loss and regulariser as tensors.

        The k samples run in groups of `samples_per_pass` (group g: samples g s .. g s + s - 1 of every
        mask, M s copies), each group's masked copies made when it runs and freed after its backward;
        the gradients add up to those of one pass over all k (same noise; each group's loss weighted
        by its share of the batch, exact for a loss that is a mean over examples)."""
        if self.path is None:
            raise RuntimeError("call trainer.prepare(batches) with the first step's batches before step()")
        parts = self._parts(batches)
        k, s = self.k, self.samples_per_pass
        noise = [source.reserve(k, [l.shape[1:] for l in self.logits.values()]) for source in self.sources]
        # groups share the per-weight thresholds of this step (int16, 2 bytes a weight)
        thresholds = {n: keep_thresholds(self.logits[n]) for n in self.weights} if s < k else {}
        self.optimizer.zero_grad(set_to_none=True)  # trainable weights; the views get theirs below
        for logits in self.logits.values():
            logits.grad = None
        task_losses = torch.zeros(self.masks, device=self.device)
        for lo in range(0, k, s):
            losses = torch.stack(self._group_losses(parts, noise, thresholds, lo, lo + s))
            losses.sum().backward()  # each mask's logits: its own loss only
            task_losses += losses.detach()
        if self.control.active:  # each tensor's sum weighted by its constraint's multiplier (or beta)
            sizes = torch.tensor([float(c.reg_batch_size or b) for c, (_, _, b) in zip(self.configs, parts)],
                                 device=self.device)
            sums = torch.stack([l.flatten(1).sum(1) * w for l, w in zip(self.logits.values(), self.entry_weights)],
                               1)  # [M, T]
            regularisers = (self.control.coefficients() / sizes[:, None] * sums).sum(1)
        else:
            scale = torch.tensor([c.beta / (c.reg_batch_size or b) for c, (_, _, b) in zip(self.configs, parts)],
                                 device=self.device)
            regularisers = scale * sum(l.flatten(1).sum(1) * w for l, w in zip(self.logits.values(),
                                                                                 self.entry_weights))  # [M]
        regularisers.sum().backward()
        for name, frozen in self.frozen_entries.items():
            self.weights[name].grad[frozen] = 0.0
        self._clip()
        for m, views in enumerate(self._views):
            for view, logits in zip(views, self.logits.values()):
                view.grad = logits.grad[m]
        self.optimizer.step()
        self.steps_done += 1
        if self.control.active:
            self.control.update(list(self.logits.values()), self.steps_done)
        return [{"loss": loss, "regulariser": reg} for loss, reg in zip(task_losses, regularisers.detach())]

    def _parts(self, batches: Sequence) -> list[tuple]:
        """(chunks [k, B/k, ...], targets, B) of every mask's batch, on the device."""
        if not isinstance(batches, (list, tuple)) or len(batches) != self.masks:
            raise ValueError(f"give one batch per mask: a list of {self.masks} batch(es), not "
                             f"{describe_output(batches)}")
        parts = []
        for batch in batches:
            inputs, targets = unpack_batch(batch)
            chunks, size = split_batch(to_device(as_arguments(inputs), self.device), self.k)
            parts.append((chunks, to_device(targets, self.device), size))
        if len({size for _, _, size in parts}) != 1:
            sizes = ", ".join(f"mask {m}: {size}" for m, (_, _, size) in enumerate(parts))
            raise ValueError(f"the masks of one trainer need batches of one size (each mask sample is one slot of "
                             f"one call); got {sizes}: use one batch size, or train the masks one at a time")
        return parts

    def _group_losses(self, parts: list, noise: list, thresholds: dict, lo: int, hi: int) -> list[torch.Tensor]:
        """Every mask's task loss on its samples lo..hi-1 (one call of the model), times their share of the batch."""
        low = self.dtype if self.dtype != torch.float32 else None
        chunks = joined([p[0] for p in parts], lo, hi, self.k)
        run = call_vmap if self.path == "vmap" else call_sequential
        with autocast(self.device, self.dtype):
            masked, gates = self._masked(noise, thresholds, lo, hi, low)
            shifts = {**self._shifts(masked, self.masks * (hi - lo)), **gates}
            outputs = run(self.model, masked, self.forward_others, chunks, shifts, self.mean and channel_first(self.mean))
        outputs = fp32_outputs(outputs) if low else outputs
        rows = [size * (hi - lo) // self.k for _, _, size in parts]
        losses = []
        for m, (output, (_, targets, size)) in enumerate(zip(split_outputs(outputs, rows, hi - lo), parts)):
            loss = self._share_loss(m, output, targets, size, lo, hi)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"mask training loss is {loss.item()}{f' (mask {m})' if self.masks > 1 else ''}"
                                         f": check the loss function and the data, or lower the learning rate")
            losses.append(loss)
        return losses

    def _masked(self, noise: list, thresholds: dict, lo: int, hi: int, low: torch.dtype | None) -> dict:
        """Samples lo..hi-1 of every mask's copies of every masked tensor, [M (hi - lo), *shape] in the
        model's layout (mask m's in rows m (hi - lo) ...): one kernel per tensor makes all of them."""
        masked = {}
        for index, (name, weights) in enumerate(self.weights.items()):
            # under bf16, vectors (biases, norms) stay fp32 on the sequential path: CPU layer norm
            # refuses a bf16 weight with an fp32 input, and autocast casts them where it must
            dtype = low if low and (self.path == "vmap" or weights.dim() >= 2) else None
            uniforms = torch.cat([n.take(index, lo, hi) for n in noise]) if len(noise) > 1 else noise[0].take(index, lo, hi)
            sample = sample_masked_weights(self.logits[name], weights, uniforms, self.execution.compiled, dtype,
                                           thresholds.get(name))
            masked[name] = sample.transpose(-1, -2) if name in self.transposed else sample
        gates, gate_means = {}, {}
        for index, unit in enumerate(self.units, len(self.weights)):
            uniforms = torch.cat([n.take(index, lo, hi) for n in noise])  # [M (hi - lo), count]
            logits = self.logits[unit.name].repeat_interleave(hi - lo, dim=0)
            sample = straight_through_samples(logits, uniforms)
            if unit.gate:
                module, size = unit.gate
                gates[module] = sample.repeat_interleave(size, dim=-1)  # [M (hi - lo), features]
                if module in self.gate_means:
                    gate_means[module] = self._mean_rows(self.masks * (hi - lo)).uses[self.gate_means[module]].mean
            else:
                for name, kept in unit.expand(sample).items():
                    # the forward's copy of W (bf16 under bf16), so the masked copy is made in that type
                    # as the weights' are (an fp32 copy would be cast by autocast, and both kept)
                    weights = self.forward_others[name]
                    masked[name] = weights * kept.to(weights.dtype)
        return masked, ({"gates": gates, "gate_means": gate_means} if gates else {})

    def _share_loss(self, m: int, outputs, targets, batch_size: int, lo: int, hi: int) -> torch.Tensor:
        """Mask m's task loss of samples lo..hi-1 (their outputs, the batch's targets), times their share of the batch."""
        if hi - lo == self.k:
            return self._loss(m, outputs, targets)
        rows = batch_size // self.k
        targets = tree_map(lambda t: target_rows(t, batch_size, lo * rows, hi * rows), targets)
        return self._loss(m, outputs, targets) * ((hi - lo) / self.k)

    def _loss(self, m: int, outputs, targets) -> torch.Tensor:
        """loss_fn(outputs, targets) of mask m, with errors that show what the model returned."""
        try:
            loss = self.loss_fns[m](outputs, targets)
        except (AttributeError, KeyError, IndexError, TypeError) as error:
            raise ValueError(f"loss_fn failed on the model's outputs {describe_output(outputs)} "
                             f"({type(error).__name__}: {error}); entries that were not tensors are None") from error
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor (the mean over the batch); got "
                             f"{describe_output(loss)}")
        return loss.reshape(())

    def _clip(self) -> None:
        """Each mask's gradient scaled to global norm at most its grad_clip, with the arithmetic of
        clip_grad_norm_ on that mask alone (with original_clipping or trainable weights, their
        gradients count towards mask 0's norm and are scaled with it)."""
        if not any(c.grad_clip for c in self.configs):
            return
        grads = [logits.grad for logits in self.logits.values()]
        extra = [t.grad for t in self.clipped_with_first if t.grad is not None]
        per_mask = [[g[m] for g in grads] + (extra if m == 0 else []) for m in range(self.masks)]
        norms = iter(torch._foreach_norm([g for tensors in per_mask for g in tensors]))
        totals = torch.stack([torch.linalg.vector_norm(torch.stack([next(norms) for _ in tensors]))
                              for tensors in per_mask])  # [M]
        limits = torch.tensor([c.grad_clip or float("inf") for c in self.configs], device=totals.device)
        factors = ((totals + 1e-6).reciprocal() * limits).clamp(max=1.0)
        for grad in grads:
            grad.mul_(factors.view(-1, *[1] * (grad.dim() - 1)))
        if extra:
            torch._foreach_mul_(extra, factors[0])

    def records(self) -> list[dict]:
        """What a log line shows of every mask besides its losses: density, the fraction of decisions
        flipped since the last call and still undecided, and its constraint's state where it has one."""
        logits = list(self.logits.values())
        return [{"density": self.density(m), **changes, **self.control.record(m, logits)}
                for m, changes in enumerate(self.decisions.record(logits))]

    def density(self, m: int = 0) -> float:
        """Fraction of mask m's weights kept (logit > 0; a unit counts the weights it covers)."""
        kept = sum(float((l[m].detach() > 0).sum()) * w for l, w in zip(self.logits.values(), self.entry_weights))
        return kept / sum(l[m].numel() * w for l, w in zip(self.logits.values(), self.entry_weights))

    def result(self, m: int = 0, history: list[dict] | None = None) -> TrainedMask:
        """Mask m as a TrainedMask (logits in the model's layout; with trainable weights, those too)."""
        weights = {n: self._model_layout(n, w) for n, w in self.weights.items()} if self.frozen_entries else None
        diagnosis = diagnose(history, self.full_losses[m], self.configs[m].target_density) if history else None
        position = {n: i for i, n in enumerate(dict(self.model.named_parameters()))}
        first = {u.name: min(position[s.name] for s in u.spans) for u in self.units}
        keys = sorted(self.logits, key=lambda n: first.get(n, position.get(n, 0)))  # the model's order
        return TrainedMask({n: self._model_layout(n, self.logits[n][m]).clone() for n in keys}, history or [],
                           weights, diagnosis, self.configs[m].removal, list(self.units))

    def state_dict(self) -> dict:
        """Logits, optimiser, noise-source and trainable weights' states (for a checkpoint inside a stage)."""
        return {"logits": {n: l.detach().clone() for n, l in self.logits.items()},
                "adam": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot: the moments change in place
                "noise": [source.state() for source in self.sources],
                "weights": {n: self.weights[n].detach().clone() for n in self.frozen_entries},
                "multipliers": self.control.state_dict(), "decisions": self.decisions.previous.clone(),
                "full_losses": list(self.full_losses), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        if "logits" not in state or "param_groups" not in state["adam"]:
            raise ValueError("this checkpoint was written by an older modmask's joint stage; delete it "
                             "(checkpoints/masks-partial.pt) to restart the stage")
        with torch.no_grad():
            for name, logits in self.logits.items():
                logits.copy_(state["logits"][name])
            for name, weights in state.get("weights", {}).items():
                self.weights[name].copy_(weights)
        self.optimizer.load_state_dict(state["adam"])
        for source, noise in zip(self.sources, state["noise"], strict=True):
            source.load_state(noise)
        if "decisions" in state:  # (checkpoints of modmask before target densities have none)
            self.control.load_state_dict(state["multipliers"])
            self.decisions.previous = state["decisions"].clone()
            self.full_losses = list(state["full_losses"])
            self.steps_done = state["steps_done"]


def _per_mask(loss_fn, config, seed) -> tuple[list, list, list]:
    """Each of loss_fn, config and seed as one entry per mask (single values repeated)."""
    given = {"loss_fn": loss_fn, "config": config, "seed": seed}
    lengths = {n: len(v) for n, v in given.items() if isinstance(v, (list, tuple))}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"one loss_fn, config and seed per mask: got {lengths}")
    masks = next(iter(lengths.values()), 1)
    if masks < 1:
        raise ValueError("a MaskTrainer needs at least one mask")
    return tuple(list(v) if n in lengths else [v] * masks for n, v in given.items())


def _check_shared(configs: list[MaskConfig], trainable) -> None:
    """The settings every mask of one trainer must share, with what to do otherwise."""
    first = configs[0]
    for m, config in enumerate(configs[1:], 1):
        differ = [f for f in ("k", "parameters", "biases", "norms", "mode", "removal", "granularity", "heads")
                  if getattr(config, f) != getattr(first, f)]
        if differ:
            raise ValueError(f"mask {m} has another {', '.join(differ)} than mask 0: the masks of one trainer share "
                             f"one call of the model; train it in a stage of its own")
    if len(configs) > 1 and (first.original_clipping or any(c.original_clipping for c in configs) or trainable):
        raise ValueError("original_clipping and trainable weights couple the masks through the shared weights' "
                         "gradients: train such a mask alone (one MaskTrainer per mask, or execution.joint=False)")
    if trainable and first.original_clipping:
        raise ValueError("trainable weights and original_clipping cannot be combined")


def _batches_forever(batches: Iterable):
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the batch iterable yields no batch")


def train_masks(model: nn.Module, functions: Sequence[tuple[Iterable, LossFn]],
                config: MaskConfig | Sequence[MaskConfig] | None = None, execution: Execution | None = None, *,
                seeds: Sequence[int] | None = None, progress: bool | str = True, log_every: int = 100,
                on_log: Callable[[int, dict], None] | None = None, start: int = 0, state: dict | None = None,
                checkpoint: Callable[[int, dict], None] | None = None, checkpoint_every: int = 0,
                collate: Callable[[list], list] | None = None, **options) -> list[TrainedMask]:
    """Train one mask per (batches, loss_fn) of `functions`, together in one MaskTrainer.

    config: one MaskConfig for every mask or one per mask (steps and mode must agree). seeds: one per
    mask (default 0, 1, ...). options: MaskTrainer's (init_logits, trainable, fixed_masks).
    on_log(m, record) gets mask m's record (step, loss, regulariser, density) every `log_every` steps.
    checkpoint(step, state) is called every `checkpoint_every` steps with the state to resume from
    (`start`=step, `state`=state; the batch iterables must be resumed by the caller). collate(batches)
    -> batches: the masks' batches of a step made one shape where they are not (e.g. sequences padded
    alike; modmask.experiments.seq2seq.pad_alike). In mode 'train' the model's own randomness
    (dropout) draws from torch's global generator, seeded from seeds[0] for the stage; the caller's
    state is restored afterwards.
    """
    configs = list(config) if isinstance(config, (list, tuple)) else [config or MaskConfig()] * len(functions)
    seeds = list(range(len(functions))) if seeds is None else list(seeds)
    steps, mode = configs[0].steps, configs[0].mode
    for m, c in enumerate(configs):
        if (c.steps, c.mode) != (steps, mode):
            raise ValueError(f"mask {m} has steps={c.steps}, mode={c.mode!r} but mask 0 has steps={steps}, "
                             f"mode={mode!r}: one trainer runs one loop")
    trainer = MaskTrainer(model, [loss for _, loss in functions], configs, execution, seed=seeds, **options)
    if state is not None:
        trainer.load_state_dict(state)
    histories: list[list[dict]] = [[] for _ in functions]
    streams = zip(*(_batches_forever(batches) for batches, _ in functions))
    step_batches = (collate(list(b)) if collate else list(b) for b in streams)
    bar = tqdm(total=steps, initial=start, desc=progress if isinstance(progress, str) else "masks",
               disable=not progress, leave=False)
    device = trainer.device
    with model_mode(model, mode), torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                                        enabled=mode == "train"):
        if mode == "train":
            torch.manual_seed(seeds[0])
        if start < steps:
            first = next(step_batches)
            trainer.prepare(first)  # (its probe draws dropout masks in mode 'train', as at step 0)
            step_batches = itertools.chain([first], step_batches)
            if state is not None and "rng" in state:  # a resumed stage's dropout draws as uninterrupted
                torch.random.set_rng_state(state["rng"])
        for step, batches in zip(range(start, steps), step_batches):
            try:
                losses = trainer.step(batches)
            except FloatingPointError as error:
                raise FloatingPointError(f"step {step}: {error}") from None
            if step % log_every == 0 or step == steps - 1:
                for m, (loss, extra) in enumerate(zip(losses, trainer.records())):
                    record = {"step": step, "loss": loss["loss"].item(), "regulariser": loss["regulariser"].item(),
                              **extra}
                    histories[m].append(record)
                    if on_log:
                        on_log(m, record)
                bar.set_postfix(density=",".join(f"{h[-1]['density']:.3f}" for h in histories))
                if all(c.early_stop for c in configs) and all(settled(h) for h in histories):
                    log.info("modmask: every mask settled at step %d of %d: stopping early (mask.early_stop)",
                             step + 1, steps)
                    break
            if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                checkpoint(step + 1, {**trainer.state_dict(),
                                      **({"rng": torch.random.get_rng_state()} if mode == "train" else {})})
            bar.update()
    bar.close()
    results = [trainer.result(m, history) for m, history in enumerate(histories)]
    for m, result in enumerate(results):  # said where the run is watched, and kept in the mask's file
        for message in (result.diagnosis or {}).get("messages", []):
            log.warning("modmask: mask %s: %s", m if len(results) > 1 else "", message)
    return results


def train_mask(model: nn.Module, batches: Iterable, loss_fn: LossFn, config: MaskConfig | None = None,
               execution: Execution | None = None, *, progress: bool | str = "mask", log_every: int = 100,
               on_log: Callable[[dict], None] | None = None, **options) -> TrainedMask:
    """Learn which weights of `model` the function behind `batches` needs (train_masks for one mask).

    batches: iterable of (inputs, targets); inputs is a tensor [B, ...], a tuple of positional
        arguments or a dict of keyword arguments (tensors are split into k chunks along dim 0). A
        batch may also be a dict of keyword arguments alone (targets None). Re-iterated when exhausted.
    loss_fn(outputs [B, ...], targets) -> scalar, the mean over the batch. outputs has the model's
        structure (e.g. a ModelOutput: read `outputs.logits`); non-tensor entries (caches) are None,
        and a loss the model computes itself (`outputs.loss`) is [k], one per sample: take its mean.
    config, execution: what the mask learns and how steps run; any of their fields given as keyword
        options override them, e.g. train_mask(model, batches, loss_fn, steps=2000, beta=1e-4,
        samples_per_pass=2). Other options: seed and MaskTrainer's (init_logits, trainable, fixed_masks).
    progress: False, True or a bar label. on_log(record) receives the record logged every `log_every`
        steps (step, loss, regulariser, density).
    Execution's samples_per_pass: how many of the k samples run together (a divisor of k, default k;
    'auto': the most that fit the device's free memory by the memory plan). Fewer hold fewer masked
    copies (extra memory samples_per_pass x |W| instead of k x |W|) and give the same result (same
    noise, gradients summed over the groups; exact for a loss that is a mean over examples, while the
    model's own randomness, e.g. dropout, is drawn per group). precision: 'fp32' (default) or 'bf16':
    the model's forward under torch.autocast, masked copies and unmasked tensors in bf16, logits, Adam
    and the regulariser in fp32. The memory plan (modmask.memory_plan) is logged in one line before
    the first step; on a GPU a plan that does not fit stops there with a MemoryError that names the
    settings that would.
    """
    config, execution, options = settings_from(config, execution, options)
    seed = options.pop("seed", 0)
    return train_masks(model, [(batches, loss_fn)], config, execution, seeds=[seed], progress=progress,
                       log_every=log_every, on_log=(lambda m, record: on_log(record)) if on_log else None,
                       **options)[0]
