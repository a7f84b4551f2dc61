"""CIFAR-10: class-exclusive weights, what removing them costs, and what the confusion changes say
about class similarity (paper §2.6; the poster: "CNNs on CIFAR 10 rely heavily on class-exclusive
weights ... removing such weights hurts performance").

Pretrain the simple CNN on 80% of the training images; train a reference mask on all classes and,
for each class k, a mask on the data without class k (the output layer keeps the reference mask).
The weights a class-k mask lacks are those only class k needs: under that mask class k's accuracy
drops, and the confusion-matrix changes show which classes take over its examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..core.analysis import iou
from ..core.evaluation import collect
from ..core.masks import Masks
from ..core.training import TrainedMask, train_mask
from ..data.cifar import ImageClassData, channel_stats, load_cifar10
from ..data.mnist import train_valid_split
from ..data.sampling import IndexSubset, RandomBatches, fixed_batches
from ..models import SimpleCNN
from .pretrain import pretrain
from .rundir import RunDir
from .study import half_mask_test

DESCRIPTION = "CIFAR-10 simple CNN: class-exclusive weights and confusion changes"


@dataclass(frozen=True)
class Config:
    dropout: bool = True
    batch_size: int = 128
    pretrain_steps: int = 20_000
    lr: float = 1e-3
    grad_clip: float = 1.0
    mask_steps: int = 20_000
    mask_lr: float = 1e-3
    beta: float = 3e-4
    k: int = 4
    stability_classes: tuple[int, ...] = (3, 5)  # a 2-class subset masked with two seeds (cat, dog)
    train_images: int = 50_000  # fewer for a quick run (taken before the 80/20 split)
    data: str | None = None  # data root; default MODMASK_DATA, then the user cache
    source: str | None = None  # a specific archive, zip or image folder
    checkpoint_every: int = 2000


PRESETS = {
    "smoke": dict(pretrain_steps=40, mask_steps=8, batch_size=32, train_images=600, checkpoint_every=20),
    "small": dict(pretrain_steps=3_000, mask_steps=1_000),
    "paper": dict(),
    "paper_no_dropout": dict(dropout=False),
}

OUTPUT = ("output.weight", "output.bias")


def confusion(model, masks, batches, classes: int) -> torch.Tensor:
    """Row-normalised confusion C[true, predicted] in %, float [classes, classes]."""
    pairs = collect(model, masks, batches, lambda out, y: torch.stack([y, out.argmax(-1)], -1))
    counts = torch.zeros(classes, classes).index_put_(tuple(pairs.t()), torch.ones(len(pairs)), accumulate=True)
    return counts / counts.sum(1, keepdim=True).clamp_min(1) * 100


def drops(reference: torch.Tensor, removed: torch.Tensor, k: int) -> dict:
    """The paper's two numbers for the mask without class k: the removed class's relative drop
    -D[k,k] / C_ref[k,k] x 100, and the largest other class's relative drop as a % of it,
    min(min_{j != k} D[j,j] / C_ref[j,j], 0) / (D[k,k] / C_ref[k,k]) x 100."""
    difference = removed - reference
    relative = difference.diagonal() / reference.diagonal().clamp_min(1e-9)
    others = torch.cat([relative[:k], relative[k + 1:]])
    target = relative[k].item()
    return {"target_drop": -target * 100,
            "other_over_target": (min(others.min().item(), 0.0) / target * 100) if target else 0.0}


def run(config: Config, run_dir: RunDir, seed: int, progress: bool = True) -> dict:
    cifar = load_cifar10(config.data, config.source)
    images, labels = cifar["train"]
    images, labels = images[:config.train_images], labels[:config.train_images]
    classes = len(cifar["classes"])
    mean, std = channel_stats(images)
    data = ImageClassData(images, labels, mean, std)
    train_idx, valid_idx = train_valid_split(len(labels))
    train = IndexSubset(data, train_idx)
    valid = fixed_batches(IndexSubset(data, valid_idx), 500)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SimpleCNN(classes, dropout=config.dropout)
    with run_dir.timed("pretrain"):
        pretrain(model, RandomBatches(train, config.batch_size, seed), F.cross_entropy, run_dir,
                 steps=config.pretrain_steps, lr=config.lr, grad_clip=config.grad_clip,
                 checkpoint_every=config.checkpoint_every, progress=progress)

    options = dict(k=config.k, beta=config.beta, lr=config.mask_lr, grad_clip=config.grad_clip, biases=True)

    def stage(name: str, indices: torch.Tensor, stage_seed: int, fixed: Masks | None = None) -> Masks:
        path = run_dir.file("masks", f"{name}.safetensors")
        if path.exists():
            trained = TrainedMask.load(path, model)
        else:
            with run_dir.timed(f"mask:{name}"):
                trained = train_mask(model, RandomBatches(IndexSubset(data, indices), config.batch_size, stage_seed),
                                     F.cross_entropy, steps=config.mask_steps, seed=stage_seed,
                                     progress=f"mask {name}" if progress else False,
                                     fixed_masks=fixed, on_log=lambda r: run_dir.log({"phase": f"mask:{name}", **r}),
                                     **options)
            trained.save(path)
        masks = trained.masks
        return Masks({**masks, **fixed}) if fixed else masks

    train_labels = labels[train_idx]
    reference = stage("reference", train_idx, seed * 100)
    kept_output = reference.only(OUTPUT)
    c_ref = confusion(model, reference, valid, classes)
    removal = []
    for k in range(classes):
        mask = stage(f"without-{k}", train_idx[train_labels != k], seed * 100 + k + 1, kept_output)
        c_k = confusion(model, mask, valid, classes)
        removal.append({"class": cifar["classes"][k], **drops(c_ref, c_k, k),
                        "difference": (c_k - c_ref).tolist(),
                        "reference_kept": (mask & reference).count() / max(reference.count(), 1)})

    pair = torch.isin(train_labels, torch.tensor(config.stability_classes))
    stability = iou(stage("stability-a", train_idx[pair], seed * 100 + 50),
                    stage("stability-b", train_idx[pair], seed * 100 + 51))
    early = [n for n in reference if n.startswith(("convs.0.", "convs.1.", "convs.2."))]
    return {"classes": cifar["classes"], "reference_confusion": c_ref.tolist(), "removal": removal,
            "stability_iou": stability, "stability_classes": [cifar["classes"][c] for c in config.stability_classes],
            "half_mask": half_mask_test(model, reference, valid, lambda out, y: out.argmax(-1) == y, early=early),
            "timings": run_dir.timings()}
