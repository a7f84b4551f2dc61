"""Continual learning on permuted MNIST: when do new tasks share old weights? (paper §2.7; the
poster: "no weight sharing up until there are enough free weights").

An FNN learns the tasks one after the other. Before task p, the weights used by the masks of
tasks 0..p-1 are frozen; every other weight is re-initialised and trains together with task p's
mask; the first layer is always re-initialised. New mask logits start at `mask_new_init` where a
weight is free and at `mask_used_init` where it is used (init 0 or -1 prefers old weights).

Each task keeps its own copy of the re-initialised first layer: the poster's expectation is that
only the first layer is re-learned, and a task evaluated later needs its own input layer (the
original code does not say how it evaluates old tasks after the reset; see docs/deviations.md).

Curves over density (task_curves) read each task's mask as a ranking of its logits, no extra
training, on that task, in the network that runs it (task_network).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from copy import deepcopy
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from ..core.analysis import union
from ..core.curves import CurveConfig
from ..core.evaluation import evaluate
from ..core.mask_config import Execution, MaskConfig
from ..core.masks import Masks
from ..core.trained import TrainedMask
from ..data.mnist import PermutedMNIST, load_mnist, normalise, permuted_mnist_tasks, train_valid_split
from ..data.sampling import RandomBatches, first_examples, fixed_batches
from ..models import MLP
from ..runs import RunDir
from ..runs.stage import mask_stage
from ..runs.study import Function, check_no_density_masks, selected_functions, study_curves

DESCRIPTION = "permuted MNIST continual learning: sharing of frozen weights across tasks (FNN)"


@dataclass(frozen=True)
class Config:
    hidden: tuple[int, ...] = (800, 800, 64)
    tasks: int = 11
    batch_size: int = 128
    # per task; beta / b = 1e-5; lr also that of the free weights, which train with the mask
    mask: MaskConfig = MaskConfig(steps=30_000, k=8, beta=0.00128, lr=0.01, grad_clip=1.0, biases=True)
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    checkpoint_every: int = 2000  # steps between checkpoints inside a task's mask stage
    mask_used_init: float = 2.0
    mask_new_init: float = 2.0  # 0: "prefer old", -1: "prefer old even more"
    reset_first_layer: bool = True
    train_images: int = 60_000  # fewer for a quick run (taken before the train/valid split)
    data: str | None = None  # data root; default MODMASK_DATA, then the user cache
    verify_data: bool = True  # check the canonical MNIST checksums (off for other IDX data)
    # curves over density of each task mask's ranking on its task (task_curves), on 2000 validation images of it;
    # may change on resume
    curves: CurveConfig = CurveConfig(examples=2000)

    def __post_init__(self):
        check_no_density_masks(self.curves, "permuted_mnist")


PRESETS = {
    "smoke": dict(hidden=(32, 32, 16), tasks=3, mask=dict(steps=30), train_images=2_000,
                  curves=dict(densities=(0.01, 0.1, 0.5), random_draws=1)),
    "small": dict(hidden=(100, 100, 32), tasks=6, mask=dict(steps=1_500)),
    "paper": dict(),
    "paper_prefer_old": dict(mask_new_init=0.0),
    "paper_prefer_old_even_more": dict(mask_new_init=-1.0),
}


def reinitialise(model: MLP, fresh: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Xavier-normal (ReLU gain; gain 1 on the last layer), bias 0, on the entries where fresh is True."""
    last = len(model.layers) - 1
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            gain = 1.0 if i == last else nn.init.calculate_gain("relu")
            std = gain * math.sqrt(2.0 / sum(layer.weight.shape))
            new = torch.randn(layer.weight.shape, generator=generator) * std
            where = fresh[f"layers.{i}.weight"]
            layer.weight[where] = new[where]
            layer.bias[fresh[f"layers.{i}.bias"]] = 0.0


def _first_layer(name: str) -> bool:
    return name.startswith("layers.0.")


def with_first_layer(model: MLP, first_layer: dict[str, torch.Tensor]) -> MLP:
    """A copy of the model with a task's own first layer; the model itself is left as it is."""
    copy = deepcopy(model)
    with torch.no_grad():
        for name, param in copy.named_parameters():
            if _first_layer(name):
                param.copy_(first_layer[name])
    return copy


def task_network(model: MLP, first_layer: dict[str, torch.Tensor], mask: Masks) -> MLP:
    """The network that runs a task, as a copy: the final weights with the task's own first layer
    and its mask applied (weights outside it zero, as the mask removes them). Its unmasked weights
    are the task's function: the other weights were re-initialised and retrained for later tasks."""
    copy = with_first_layer(model, first_layer)
    with torch.no_grad():
        for name, param in copy.named_parameters():
            param.mul_(mask[name])
    return copy


def task_curves(model: MLP, trained: list[TrainedMask], first_layers: list[dict], valid: list[PermutedMNIST],
                train: list[PermutedMNIST], config: Config, seed: int, batches: int = 8) -> dict[str, dict]:
    """The curves of every task's mask ranking (its logits) on that task ("task-<t>": the first
    config.curves.examples validation images in its permutation), in the task's network
    (task_network, so "every weight kept" is the task's masked accuracy), beside the baselines
    computed in that network on `batches` fixed training batches of the task. Each task has a
    network of its own, so each is one runs.study.study_curves call; curves.functions selects tasks."""
    functions = [Function(f"task-{t}", list(itertools.islice(RandomBatches(train[t], config.batch_size,
                                                                            4321 + seed * 1000 + t), batches)),
                          fixed_batches(first_examples(valid[t], config.curves.examples), 2000), F.cross_entropy,
                          lambda out, y: out.argmax(-1) == y, f"task {t + 1}")
                 for t in range(len(trained))]
    each = dataclasses.replace(config.curves, functions=None)  # selected here, across the tasks
    block = {}
    for function in selected_functions(functions, config.curves.functions):
        t = int(function.name.removeprefix("task-"))
        network = task_network(model, first_layers[t], trained[t].masks)
        block.update(study_curves(network, [function], {function.name: trained[t]}, each, seed=seed))
    return block


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    mnist = load_mnist(config.data, verify=config.verify_data)
    images, labels = mnist["train"]
    images, labels = images[:config.train_images], labels[:config.train_images]
    train_idx, valid_idx = train_valid_split(len(labels))
    train_x, mean, std = normalise(images[train_idx])
    valid_x, _, _ = normalise(images[valid_idx], mean, std)
    orders = permuted_mnist_tasks(config.tasks)
    with torch.random.fork_rng():  # the initial values are replaced by task 0's initialisation
        torch.manual_seed(seed)
        model = MLP(784, config.hidden, 10)
    names = [n for n, _ in model.named_parameters()]

    trained: list[TrainedMask] = []
    masks: list[Masks] = []
    first_layers: list[dict[str, torch.Tensor]] = []
    free: list[dict[str, float]] = []
    for task in range(config.tasks):
        weights_path = run_dir.file("checkpoints", f"after-task-{task}.safetensors")
        mask_path = run_dir.file("masks", f"task-{task}.safetensors")
        done = weights_path.exists() and mask_path.exists()
        if done:  # resume: the weights after this task (the mask stage loads its mask)
            model.load_state_dict(load_file(str(weights_path)))
        else:  # the model holds the weights after the task before; a half-written task starts again
            mask_path.unlink(missing_ok=True)
        trained.append(_learn_task(model, masks, task, config, run_dir, seed,
                                   PermutedMNIST(train_x, labels[train_idx], orders[task]), weights_path, done, progress))
        masks.append(trained[-1].masks)
        first_layers.append({n: p.detach().clone() for n, p in model.named_parameters() if _first_layer(n)})
        used = union(masks)
        free.append({n: 1 - used.densities()[n] for n in names if n.endswith("weight")})

    valid = [PermutedMNIST(valid_x, labels[valid_idx], order) for order in orders]
    def accuracies(removal: str) -> list[float]:
        """Every task with its own mask and first layer, at the end [%], removed as `removal` says."""
        return [evaluate(with_first_layer(model, first_layers[task]), masks[task], fixed_batches(valid[task], 2000),
                         lambda out, y: out.argmax(-1) == y, removal=removal) * 100 for task in range(config.tasks)]

    accuracy = accuracies("zero")
    modes = {"trained_with": config.mask.removal,  # task -> its accuracy, as the accuracy table
             "modes": {removal: {f"T{task + 1}": {"accuracy": value} for task, value in enumerate(values)}
                       for removal, values in (("zero", accuracy), ("mean", accuracies("mean")))}}

    sharing = []
    for task in range(1, config.tasks):
        earlier = union(masks[:task])
        mine = masks[task]
        sharing.append({n: int((mine[n] & earlier[n]).sum()) / max(int(mine[n].sum()), 1)
                        for n in names if n.endswith("weight")})
    results = {"accuracy": accuracy, "removal_modes": modes, "sharing": sharing, "free": free,
               "density": [m.densities() for m in masks]}
    if config.curves.enabled:
        train = [PermutedMNIST(train_x, labels[train_idx], order) for order in orders]
        with run_dir.timed("curves"):
            results["curves"] = task_curves(model, trained, first_layers, valid, train, config, seed)
    return {**results, "timings": run_dir.timings()}


def _learn_task(model, masks, task, config, run_dir, seed, data, weights_path, done, progress) -> TrainedMask:
    """Re-initialise the free weights, then train them jointly with the task's mask (a mask stage
    that saves the trained weights before its mask). Seeded per task, so a resumed run draws what
    an uninterrupted one draws."""
    generator = torch.Generator().manual_seed(seed * 1000 + task)
    params = dict(model.named_parameters())
    if masks:
        used = {n: m.clone() for n, m in union(masks).items()}
        if config.reset_first_layer:
            for n in used:
                if _first_layer(n):
                    used[n][:] = False
    else:
        used = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    if not done:
        reinitialise(model, {n: ~u for n, u in used.items()}, generator)
    new_init = config.mask_new_init if masks else config.mask_used_init  # task 0: 2 everywhere
    init_logits = {n: torch.where(u, config.mask_used_init, new_init) for n, u in used.items()}

    def keep_weights(trained):
        with torch.no_grad():
            for name, weights in trained.weights.items():
                params[name].copy_(weights)
        tmp = weights_path.with_name(weights_path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(weights_path)

    batches = RandomBatches(data, config.batch_size, 1234 + seed * 1000 + task)
    return mask_stage(run_dir, f"task-{task}", model, batches, F.cross_entropy, config.mask, config.execution,
                      seed=seed * 1000 + task, checkpoint_every=config.checkpoint_every, progress=progress, label=f"task {task}", before_save=keep_weights, log_every=200,
                      init_logits=init_logits, trainable={n: ~u for n, u in used.items()})
