"""Several independent masks of one frozen model trained in one pass (M masks x K samples).

The masks of a study share nothing but the frozen weights, so their M x K masked copies and their
batches can go through one call of the model: each mask keeps its own settings (beta, lr, clip,
seed and noise source, from its MaskTrainer), and one joint step is exactly M separate steps (the
same noise, losses and gradients; only the batched matrix products round differently). On a
CPU with a small network one pass over M x K samples costs much less than M passes over K; on a
GPU, which the paper's networks fill only partly, more so.

    trained = train_masks_jointly(model, [(add_batches, loss), (mul_batches, loss)],
                                  [MaskConfig(steps=2000), MaskConfig(steps=2000, beta=3e-4)], seeds=[0, 1])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import as_arguments, flatten_output, split_batch, to_device, unpack_batch
from .gumbel import keep_thresholds, sample_masked_weights
from .mask_config import MaskConfig
from .optim import adam
from .memory import autocast, check_fits_device, fit_samples_per_pass, free_memory, memory_plan
from .masking import call_sequential, call_vmap, choose_path, model_mode, parameters_restored
from .training import LossFn, MaskTrainer, TrainedMask, _batches_forever, _samples, fp32_outputs, low_precision

log = logging.getLogger(__name__)


class JointMaskTrainer:
    """M MaskTrainers of one model, stepped together: `step([batch_1, ..., batch_M])`.

    The masks must mask the same tensors with the same fixed masks, and each mask's samples get
    the same number of examples (B_m / k_m equal for all m), since sample j of mask m is one slot
    of one vmapped call; they share k, samples_per_pass, precision and `compiled`. original_clipping
    and trainable weights are refused: they couple the masks through the shared weights' gradients.

    The masks' logits are stacked into one leaf per tensor ([M, *shape]), and the regulariser,
    per-mask gradient clipping and Adam (each mask with its own beta, clip and lr) run on the
    stacks: a few kernels per tensor instead of M, which on small networks cost as much as the
    pass itself. The trainers' `logits` become read-only views of the stacks; the trainers are the
    stage's from then on (their own optimisers are dropped).
    """

    def __init__(self, trainers: Sequence[MaskTrainer]):
        if not trainers:
            raise ValueError("joint training needs at least one mask")
        first = trainers[0]
        for index, trainer in enumerate(trainers):
            where = f"mask {index}"
            if trainer.model is not first.model:
                raise ValueError(f"{where} trains on another model than mask 0: the masks of one joint stage "
                                 f"share one frozen model (train the other model's masks in a stage of their own)")
            if list(trainer.weights) != list(first.weights) or trainer.transposed != first.transposed:
                differ = sorted(set(trainer.weights) ^ set(first.weights))
                raise ValueError(f"{where} masks other tensors than mask 0 ({differ}); give every mask of a "
                                 f"joint stage the same parameters, biases and norms")
            if any(not torch.equal(trainer.others[n], first.others[n]) for n in first.others):
                raise ValueError(f"{where} has other fixed masks than mask 0; train it in a stage of its own")
            if trainer.original_clipping or trainer.frozen_entries:
                raise ValueError(f"{where} uses original_clipping or trainable weights, which couple the masks "
                                 f"through the shared weights' gradients: train it alone")
            if (trainer.dtype, trainer.compiled, trainer.k, trainer.samples_per_pass) != (
                    first.dtype, first.compiled, first.k, first.samples_per_pass):
                raise ValueError(f"{where} has another k, samples_per_pass, precision or `compiled` setting "
                                 f"than mask 0")
        self.trainers = list(trainers)
        self.model, self.path, self.plan, self.others = first.model, None, None, first.others
        self.logits = {n: torch.stack([t.logits[n].detach() for t in trainers]).requires_grad_(True)
                       for n in first.weights}
        with torch.no_grad():
            for index, trainer in enumerate(trainers):
                trainer.logits = {n: stacked[index] for n, stacked in self.logits.items()}
        self.adam = _StackedAdam(self.logits, [t.optimizer.defaults["lr"] for t in trainers])
        self.clips = [t.grad_clip for t in trainers]
        for trainer in trainers:
            # the stage steps them: their own optimiser and logits go, and the first trainer's
            # layout copies of the frozen weights serve every mask (the plan counts them once)
            trainer.optimizer, trainer.clipped = None, []
            trainer.weights, trainer.others = first.weights, first.others

    def step(self, batches: Sequence) -> list[dict]:
        """One update of every mask, mask m on batches[m]; returns each mask's task loss and regulariser.

        With samples_per_pass s < k the k samples of every mask run in groups of s (group g holds
        samples g s .. g s + s - 1 of every mask: M x s copies), as MaskTrainer.step runs them."""
        if len(batches) != len(self.trainers):
            raise ValueError(f"{len(batches)} batches for {len(self.trainers)} masks")
        parts, samples = [], []
        for index, (trainer, batch) in enumerate(zip(self.trainers, batches)):
            inputs, targets = unpack_batch(batch)
            chunks, batch_size = split_batch(to_device(as_arguments(inputs), trainer.device), trainer.k)
            parts.append((chunks, to_device(targets, trainer.device), batch_size))
            samples.append(batch_size // trainer.k)
        if len(set(samples)) != 1:
            sizes = ", ".join(f"mask {i}: batch {parts[i][2]} for k={t.k}" for i, t in enumerate(self.trainers))
            raise ValueError(f"the masks of a joint stage need the same examples per sample (batch size / k); "
                             f"got {sizes}: use one batch size (or train the masks one at a time)")
        first = self.trainers[0]
        if self.plan is None:
            self._plan_memory(_concatenate([p[0] for p in parts]))  # resolves samples_per_pass='auto'
        k, group = first.k, first.samples_per_pass
        noise = [t.source.reserve(t.k, [w.shape for w in t.weights.values()]) for t in self.trainers]
        # groups share the per-weight thresholds of this step
        thresholds = {n: keep_thresholds(l) for n, l in self.logits.items()} if group < k else {}
        for logits in self.logits.values():
            logits.grad = None
        task_losses = [0.0] * len(self.trainers)
        with parameters_restored(self.model) if self.path is None else contextlib.nullcontext():
            for lo in range(0, k, group):
                losses = self._group_losses(parts, noise, thresholds, lo, lo + group)
                torch.stack(losses).sum().backward()  # each mask's logits: its own loss only
                task_losses = [total + loss.detach() for total, loss in zip(task_losses, losses)]
        # beta_m / b_m * sum(logits_m) for every mask m at once: [M]
        scale = torch.tensor([t.beta / (t.reg_batch_size or b) for t, (_, _, b) in zip(self.trainers, parts)],
                             device=first.device)
        regularisers = scale * sum(l.flatten(1).sum(1) for l in self.logits.values())
        regularisers.sum().backward()
        self._clip()
        self.adam.step()
        return [{"loss": loss, "regulariser": reg} for loss, reg in zip(task_losses, regularisers.detach())]

    def _group_losses(self, parts: list, noise: list, thresholds: dict, lo: int, hi: int) -> list[torch.Tensor]:
        """Every mask's task loss on its samples lo..hi-1 (one call of the model), times their share of the batch."""
        first = self.trainers[0]
        k, low = first.k, first.dtype if first.dtype != torch.float32 else None
        chunks = _concatenate([c if hi - lo == k else _samples(c, lo, hi) for c, _, _ in parts])
        if self.path is None:
            with torch.no_grad():  # the paths are compared in fp32 (bf16 roundings differ)
                self.path = choose_path(self.model, self._masked(noise, thresholds, lo, hi, None), first.others,
                                        chunks, first.requested_path)
            for trainer in self.trainers:
                trainer.path = self.path
            if low:  # as in MaskTrainer
                self.others = low_precision(first.others, low, self.path)
        run = call_vmap if self.path == "vmap" else call_sequential
        with autocast(first.device, first.dtype):
            outputs = run(self.model, self._masked(noise, thresholds, lo, hi, low), self.others, chunks)
        losses = []
        sizes = [b * (hi - lo) // k for _, _, b in parts]
        for index, (trainer, output, (_, targets, b)) in enumerate(
                zip(self.trainers, _split_outputs(fp32_outputs(outputs) if low else outputs, sizes), parts)):
            loss = trainer._share_loss(output, targets, b, lo, hi)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"mask {index}: mask training loss is {loss.item()}: check the "
                                         f"loss function and the data, or lower the learning rate")
            losses.append(loss)
        return losses

    def _clip(self) -> None:
        """Each mask's gradient scaled to global norm at most its grad_clip (as clip_grad_norm_ does alone)."""
        if not any(self.clips):
            return
        grads = [l.grad for l in self.logits.values()]
        norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]),
                                         dim=0)  # [M]
        limits = torch.tensor([c or float("inf") for c in self.clips], device=norms.device)
        factors = (limits / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(factors.view(-1, *[1] * (grad.dim() - 1)))

    def _plan_memory(self, chunks) -> None:
        """The memory plan of the joint step (M masks' logits and Adam, M x samples_per_pass masked
        copies), logged; samples_per_pass='auto' resolved for all masks; on a GPU a plan that cannot
        fit stops here."""
        first, masks = self.trainers[0], len(self.trainers)
        auto = first.samples_per_pass == "auto"
        plan = memory_plan(self.model, k=masks * first.k, chunks=chunks, parameters=list(self.logits),
                           dtype=first.dtype, samples_per_pass=masks * (first.k if auto else first.samples_per_pass))
        plan, free = dataclasses.replace(plan, masks=masks), free_memory(first.device)
        if auto:
            fits = fit_samples_per_pass(plan, free)
            plan = plan.with_settings(samples_per_pass=masks * fits)
            for trainer in self.trainers:
                trainer.samples_per_pass = fits
        self.plan = plan
        log.info("modmask: joint stage of %d masks: %s", masks, self.plan.summary())
        check_fits_device(self.plan, first.device, free)

    def _masked(self, noise: list, thresholds: dict, lo: int, hi: int, low: torch.dtype | None
                ) -> dict[str, torch.Tensor]:
        """Samples lo..hi-1 of every mask's copies of every masked tensor, [M (hi - lo), *shape] in
        the model's layout: one kernel per tensor makes all copies (each mask with its own noise)."""
        first = self.trainers[0]
        masked = {}
        for index, (name, weights) in enumerate(first.weights.items()):
            # as in MaskTrainer._masked: under bf16, vectors stay fp32 on the sequential path
            dtype = low if low and (self.path == "vmap" or weights.dim() >= 2) else None
            uniforms = torch.cat([n.take(index, lo, hi) for n in noise])
            sample = sample_masked_weights(self.logits[name], weights, uniforms, first.compiled, dtype,
                                           thresholds.get(name))
            masked[name] = sample.transpose(-1, -2) if name in first.transposed else sample
        return masked

    def state_dict(self) -> dict:
        """Logits, optimiser and noise-source states of every mask (for a checkpoint inside a stage)."""
        return {"logits": {n: l.detach().clone() for n, l in self.logits.items()}, "adam": self.adam.state_dict(),
                "noise": [t.source.state() for t in self.trainers]}

    def load_state_dict(self, state: dict) -> None:
        if "logits" not in state or "param_groups" not in state["adam"]:
            raise ValueError("this checkpoint was written by an older modmask's joint stage; delete it "
                             "(checkpoints/masks-partial.pt) to restart the stage")
        with torch.no_grad():
            for name, logits in self.logits.items():
                logits.copy_(state["logits"][name])
        self.adam.load_state_dict(state["adam"])
        for trainer, noise in zip(self.trainers, state["noise"], strict=True):
            trainer.source.load_state(noise)


class _StackedAdam:
    """torch.optim.Adam on stacked logits [M, *shape], mask m with learning rate lrs[m]: one
    parameter group per mask, whose parameters are views of the stacks (mask m's slices), so each
    mask steps exactly as its own Adam would (fused: one kernel per group)."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: Sequence[float]):
        self.params = list(params.values())
        # detached views share the stacks' storage: Adam's in-place update moves the stacks
        self.views = [[p.detach()[m] for p in self.params] for m in range(len(lrs))]
        self.optimizer = adam([{"params": views, "lr": lr} for views, lr in zip(self.views, lrs)])

    def step(self) -> None:
        for m, views in enumerate(self.views):
            for view, param in zip(views, self.params):
                view.grad = param.grad[m]
        self.optimizer.step()

    def state_dict(self) -> dict:
        return copy.deepcopy(self.optimizer.state_dict())  # a snapshot: the live moments change in place

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def _concatenate(chunks_per_mask: list) -> tuple:
    """The split arguments of every mask as one: tensors [k_m, B/k, ...] -> [sum k_m, B/k, ...];
    other arguments must be the same for every mask."""
    args = []
    for values in zip(*(c[0] for c in chunks_per_mask), strict=True):
        args.append(_join(values))
    names = list(chunks_per_mask[0][1])
    kwargs = {name: _join([c[1][name] for c in chunks_per_mask]) for name in names}
    return tuple(args), kwargs


def _join(values: Sequence[Any]) -> Any:
    if isinstance(values[0], torch.Tensor) and values[0].dim():
        shapes = {tuple(v.shape[1:]) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"the masks' batches have inputs of different shapes per sample {sorted(shapes)} "
                             f"(e.g. sequences padded to other lengths); a joint stage needs one shape: give "
                             f"`collate` (run_study, train_masks_jointly) a function that pads them alike, or "
                             f"train the masks one at a time (MaskConfig joint=False)")
        return torch.cat(values)
    if any(v is not values[0] and not (isinstance(v, torch.Tensor) and torch.equal(v, values[0])) and v != values[0]
           for v in values[1:]):
        raise ValueError("a non-batched argument (e.g. a step count or flag) differs between the masks' batches; "
                         "a joint stage calls the model once for all of them")
    return values[0]


def _split_outputs(outputs: Any, sizes: list[int]) -> list:
    """The joint output [sum B_m, ...] split back into each mask's [B_m, ...] (same structure)."""
    tensors, rebuild = flatten_output(outputs)
    pieces = [t.split(sizes) if t.dim() and t.shape[0] == sum(sizes) else [t] * len(sizes) for t in tensors]
    return [rebuild([p[m] for p in pieces]) for m in range(len(sizes))]


def train_masks_jointly(model: nn.Module, functions: Sequence[tuple[Iterable, LossFn]],
                        configs: Sequence[MaskConfig] | MaskConfig, *, seeds: Sequence[int],
                        options: Sequence[dict] | None = None, progress: bool | str = True, log_every: int = 100,
                        on_log: Callable[[int, dict], None] | None = None, start: int = 0,
                        state: dict | None = None, checkpoint: Callable[[int, dict], None] | None = None,
                        checkpoint_every: int = 0, collate: Callable[[list], list] | None = None
                        ) -> list[TrainedMask]:
    """Train one mask per (batches, loss_fn) of `functions` in one pass; the same result as
    train_mask on each with its config and seed, up to float rounding.

    configs: one MaskConfig per function, or one for all (steps and mode must agree). options:
    per function, MaskTrainer's extra arguments (e.g. fixed_masks). on_log(m, record) gets mask
    m's record every `log_every` steps. checkpoint(step, state) is called every `checkpoint_every`
    steps with the state to resume from (`start`=step, `state`=state; the batch iterables must be
    resumed by the caller). collate(batches) -> batches: the masks' batches of a step made one
    shape where they are not (e.g. sequences padded alike; modmask.experiments.seq2seq.pad_alike).
    """
    configs = list(configs) if isinstance(configs, Sequence) else [configs] * len(functions)
    if not (len(configs) == len(functions) == len(seeds)):
        raise ValueError(f"{len(functions)} functions, {len(configs)} configs and {len(seeds)} seeds: give one each")
    steps, mode = configs[0].steps, configs[0].mode
    for index, config in enumerate(configs):
        if (config.steps, config.mode) != (steps, mode):
            raise ValueError(f"mask {index} has steps={config.steps}, mode={config.mode!r} but mask 0 has "
                             f"steps={steps}, mode={mode!r}: a joint stage runs one loop")
    options = list(options or [{}] * len(functions))
    joint = JointMaskTrainer([MaskTrainer(model, loss_fn, seed=seed, **config.trainer_options(), **extra)
                              for (_, loss_fn), config, seed, extra in zip(functions, configs, seeds, options)])
    if state is not None:
        joint.load_state_dict(state)
    histories: list[list[dict]] = [[] for _ in functions]
    streams = [_batches_forever(batches) for batches, _ in functions]
    bar = tqdm(total=steps, initial=start, desc=progress if isinstance(progress, str) else "masks",
               disable=not progress, leave=False)
    device = joint.trainers[0].device
    with model_mode(model, mode), torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                                        enabled=mode == "train"):
        if mode == "train":
            torch.manual_seed(seeds[0])
        for step in range(start, steps):
            batches = [next(stream) for stream in streams]
            losses = joint.step(collate(batches) if collate else batches)
            if step % log_every == 0 or step == steps - 1:
                for index, (trainer, loss) in enumerate(zip(joint.trainers, losses)):
                    record = {"step": step, "loss": loss["loss"].item(), "regulariser": loss["regulariser"].item(),
                              "density": trainer.density()}
                    histories[index].append(record)
                    if on_log:
                        on_log(index, record)
            if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                checkpoint(step + 1, joint.state_dict())
            bar.update()
    bar.close()
    return [trainer.result(history) for trainer, history in zip(joint.trainers, histories)]


