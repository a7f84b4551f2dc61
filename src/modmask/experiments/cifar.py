"""CIFAR-10: class-exclusive weights, what removing them costs, and what the confusion changes say
about class similarity (paper §2.6; the poster: "CNNs on CIFAR 10 rely heavily on class-exclusive
weights ... removing such weights hurts performance").

Pretrain the simple CNN on 80% of the training images (or, with `model=resnet`, ResNet-110 on all
of them with crop-and-flip augmentation, evaluated on the official test set); train a reference
mask on all classes and, for each class k, a mask on the data without class k (the output layer
keeps the reference mask). The weights a class-k mask lacks are those only class k needs: under
that mask class k's accuracy drops, and the confusion-matrix changes show which classes take over
its examples.

Curves over density (class_curves) read the reference mask and each class-k mask as rankings of
their logits, no extra training: on class k's accuracy and on the other classes' (the specificity),
for the classes curves.functions selects (the first two by default, all in the paper presets).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..core.analysis import iou, overlap_chance, overlap_matrix
from ..core.curves import CurveConfig
from ..core.evaluation import collect
from ..core.mask_config import Execution, MaskConfig
from ..core.masks import Masks, random_masks
from ..core.trained import TrainedMask
from ..data.augment import AugmentedBatches
from ..data.cifar import ImageClassData, channel_stats, load_cifar10
from ..data.mnist import train_valid_split
from ..data.sampling import IndexSubset, OrderedBatches, RandomBatches, balanced_subset, fixed_batches
from ..models import CifarResNet, SimpleCNN
from ..runs import RunDir
from .pretrain import pretrain
from ..runs.stage import Stage, mask_stages
from ..runs.study import Function, check_no_density_masks, half_mask_test, removal_reference, study_curves, unit_statistics

DESCRIPTION = "CIFAR-10 simple CNN or ResNet-110: class-exclusive weights and confusion changes"

# Per-model defaults of the settings left None in Config (paper §2.6); a mask batch size of None
# means batch_size.
MODEL_DEFAULTS = {"cnn": {"pretrain_steps": 20_000, "lr": 1e-3, "mask.steps": 20_000, "mask.lr": 1e-3,
                          "mask.beta": 3e-4, "mask_batch_size": None},
                  "resnet": {"pretrain_steps": 64_000, "lr": 0.1, "mask.steps": 30_000, "mask.lr": 0.03,
                             "mask.beta": 2e-5, "mask_batch_size": 256}}
# The ResNet's fixed recipe: SGD, lr x 0.1 at 1/2 and 3/4 of pretraining (32k and 48k of 64k), no
# gradient clipping in pretraining (grad_clip is then the masks' only), crop-and-flip augmentation.
RESNET_PRETRAIN = dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4, grad_clip=None)
RESNET_LR_DROPS = (1 / 2, 3 / 4)
RESNET_MEAN, RESNET_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class Config:
    model: str = "cnn"  # cnn | resnet
    dropout: bool = True  # the CNN's dropout
    resnet_blocks: int = 18  # BasicBlocks per ResNet stage: 18 = ResNet-110, 3 = ResNet-20
    batch_size: int = 128  # pretraining (and the regulariser's b)
    mask_batch_size: int | None = None  # None: the model's default (CNN: batch_size; ResNet: 256)
    pretrain_steps: int | None = None  # None: the model's default, as for lr and mask steps, lr, beta
    lr: float | None = None
    grad_clip: float = 1.0  # the CNN's pretraining
    # Everything is masked: conv/linear weights, biases and BatchNorm affine parameters.
    mask: MaskConfig = MaskConfig(steps=None, k=4, beta=None, lr=None, grad_clip=1.0, biases=True, norms=True)
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    # The original divides the regulariser by the pretraining batch size even where the mask batch
    # differs (the ResNet: 128 vs 256); modmask divides by the mask batch unless this is set.
    original_regulariser_batch: bool = False
    stability_classes: tuple[int, ...] = (3, 5)  # a 2-class subset masked with two seeds (cat, dog)
    random_draws: int = 3  # random removals per class as the control of its drop (0: none), per tensor and pooled
    # curves over density of the reference and class masks' rankings (class_curves): the first two classes (their
    # own accuracy and the other classes'), on at most 1000 examples each; may change on resume
    curves: CurveConfig = CurveConfig(functions=("airplane*", "automobile*"), examples=1000)
    train_images: int = 50_000  # fewer for a quick run (taken before the CNN's 80/20 split)
    data: str | None = None  # data root; default MODMASK_DATA, then the user cache
    source: str | None = None  # a specific archive, zip or image folder
    checkpoint_every: int = 2000

    def __post_init__(self):
        if self.model not in MODEL_DEFAULTS:
            raise ValueError(f"model must be one of {', '.join(MODEL_DEFAULTS)}, not {self.model!r}")
        check_no_density_masks(self.curves, "cifar")

    def variant_defaults(self) -> dict:
        defaults = MODEL_DEFAULTS[self.model]
        return {**defaults, "mask_batch_size": defaults["mask_batch_size"] or self.batch_size,
                "mask.reg_batch_size": self.batch_size if self.original_regulariser_batch else None}


SMOKE_CURVES = dict(densities=(0.01, 0.1, 0.5), random_draws=1)
# the paper presets: curves for every class on all its evaluation examples (minutes on a GPU)
EVERY_CLASS = dict(functions=None, examples=0)
PRESETS = {
    "smoke": dict(pretrain_steps=40, mask=dict(steps=8), batch_size=32, train_images=600, checkpoint_every=20,
                  curves=SMOKE_CURVES),
    # small: 3k pretraining steps and 300 steps per mask. The paper's mask lr (1e-3) cannot move a
    # logit from 2 below 0 in so few Adam steps; at 1e-2 the masks kept 96% of the weights and the
    # removed class dropped 5% on average; at 3e-2 the reference mask keeps ~30% and a removed class
    # drops ~100% (measured; docs/results.md). Curves for one class (airplane) on 200 examples each:
    # 356 evaluations of the CNN, about 0.35 s per 100 images on one busy core (4 minutes)
    "small": dict(pretrain_steps=3_000, mask=dict(steps=300, lr=3e-2), curves=dict(functions=("airplane*",), examples=200)),
    "paper": dict(curves=EVERY_CLASS),
    "paper_no_dropout": dict(dropout=False, curves=EVERY_CLASS),
    "smoke-resnet": dict(model="resnet", resnet_blocks=1, pretrain_steps=40, mask=dict(steps=8), batch_size=32,
                         mask_batch_size=32, train_images=600, checkpoint_every=20, curves=SMOKE_CURVES),
    # ResNet-20, short: measured on one busy CPU thread ~1 s per pretraining step and ~1.7 s per
    # mask step, so about 2.5 hours in all (not run yet). ResNet-110 needs a GPU (~6 s and ~10 s).
    # Its curves: one class on 100 images each, 356 evaluations of about 1.4 s (8 minutes)
    "small-resnet": dict(model="resnet", resnet_blocks=3, pretrain_steps=2_000, mask=dict(steps=300),
                         curves=dict(functions=("airplane*",), examples=100)),
    "paper-resnet": dict(model="resnet", curves=EVERY_CLASS),
}

OUTPUT = ("output.weight", "output.bias")


def confusion(model, masks, batches, classes: int, removal: str = "zero", read=None) -> torch.Tensor:
    """Row-normalised confusion C[true, predicted] in %, float [classes, classes], the removed weights
    removed as `removal` says (read: the Reference of `batches` for mean removal)."""
    pairs = collect(model, masks, batches, lambda out, y: torch.stack([y, out.argmax(-1)], -1), removal=removal,
                    reference=read)
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


def random_removal(model, mask: Masks, reference: Masks, batches, c_ref: torch.Tensor, k: int, draws: int,
                   seed: int, removal: str = "zero", read=None) -> dict:
    """The control of class k's drop: the reference mask with as many of its weights removed at
    random as the class-k mask lacks of it (the count of mask & reference drawn within the
    reference): per tensor ("random_target_drop"), and in total over the tensors
    ("random_pooled_target_drop"), where a small tensor (a bias, a BatchNorm gain) may lose more of
    its weights. The removed class's relative drop, mean over `draws` each (removal, read: as in confusion)."""
    if not draws:
        return {}
    kept = mask & reference
    controls = {}
    for match, key in (("tensor", "random_target_drop"), ("pooled", "random_pooled_target_drop")):
        generator = torch.Generator().manual_seed(seed * 100 + k)  # the per-tensor draws as before the pooled ones
        results = [drops(c_ref, confusion(model, random_masks(kept, generator, within=reference, match=match), batches,
                                          len(c_ref), removal, read), k) for _ in range(draws)]
        controls[key] = sum(r["target_drop"] for r in results) / draws
    return controls


def class_removal(model, reference: Masks, without: list[Masks], batches, classes: int, draws: int, seed: int,
                  removal: str = "zero") -> tuple[torch.Tensor, list[tuple[torch.Tensor, dict, dict]]]:
    """In one removal mode: the reference mask's confusion [classes, classes] and, for each class k,
    (the confusion under the mask without k, its drops, their random controls: random_removal), all
    on `batches`, whose means are read once under mean removal."""
    read = removal_reference(model, batches, list(reference), removal)
    c_ref = confusion(model, reference, batches, classes, removal, read)
    per_class = []
    for k, mask in enumerate(without):
        c_k = confusion(model, mask, batches, classes, removal, read)
        per_class.append((c_k, drops(c_ref, c_k, k),
                          random_removal(model, mask, reference, batches, c_ref, k, draws, seed, removal, read)))
    return c_ref, per_class


DROPS = ("target_drop", "random_target_drop", "random_pooled_target_drop", "other_over_target")


def removal_in_modes(model, reference: Masks, without: list[Masks], batches, class_names: list[str], draws: int,
                     seed: int, trained_with: str, zero: list[dict]) -> dict:
    """The class-removal table in both removal modes ({"trained_with", "modes": {mode: {class: {drop:
    value [%]}}}}, the drops of DROPS, each against the reference mask in the same mode); zero: the
    study's removal rows in zero mode, as computed already."""
    _, per_class = class_removal(model, reference, without, batches, len(class_names), draws, seed, "mean")
    mean = [{**d, **controls} for _, d, controls in per_class]
    return {"trained_with": trained_with, "modes": {
        mode: {name: {key: row[key] for key in DROPS if key in row} for name, row in zip(class_names, rows)}
        for mode, rows in (("zero", zero), ("mean", mean))}}


def class_curve_functions(eval_set: ImageClassData, train_labels: torch.Tensor, train_idx: torch.Tensor,
                          class_names: list[str], sample, config: Config, seed: int) -> list[Function]:
    """Two functions of the curves per class k: "<class>", the accuracy on its evaluation examples,
    and "<class>-others", on the other classes' (each a class-balanced subset of at most
    config.curves.examples). Their `train`, for the baselines that read data, is a stream of training
    batches of the same classes, sample(indices, seed), seeded afresh so that a resumed run reads
    the same first batches. Batches are encoded only for the functions the curves select."""
    correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
    functions = []
    for k, name in enumerate(class_names):
        for own, label, title in ((True, name, name), (False, f"{name}-others", f"the classes other than {name}")):
            where = ((eval_set.labels == k) == own).nonzero().squeeze(1)
            if 0 < config.curves.examples < len(where):
                where = where[balanced_subset(eval_set.labels[where], config.curves.examples, seed)]
            train = sample(train_idx[(train_labels == k) == own], 4321 + seed * 100 + k)
            functions.append(Function(label, train, OrderedBatches(IndexSubset(eval_set, where), 250), F.cross_entropy,
                                      correct, title))
    return functions


def class_curves(model, reference: TrainedMask, without: dict[str, TrainedMask], functions: list[Function],
                 class_names: list[str], config: CurveConfig, seed: int) -> dict:
    """The curves of class k's functions ranked by the reference mask's logits and by the class-k
    mask's ("without-<k>": the weights every class but k needs), runs.study.study_curves. The class
    masks keep the reference mask on the output layer, so the curves select among the other tensors
    (unless config.subset says otherwise) and the output layer keeps the reference mask there too.
    Read: the class-k mask's top weights should carry the other classes (high sufficiency on
    "<class>-others") but not class k, whose exclusive weights it ranks low; the reference mask's
    carry both."""
    output = {n: reference.logits[n] for n in OUTPUT}  # the class masks' output layer is the reference's
    output_units = [u for u in reference.units if u.name in output]  # unit masks: the output layer's rows
    trained = {"reference": reference, **{name: TrainedMask({**t.logits, **output}, units=[*t.units, *output_units])
                                          for name, t in without.items()}}
    ranked = {f"{name}{suffix}": ["reference", f"without-{k}"] for k, name in enumerate(class_names)
              for suffix in ("", "-others")}
    subset = config.subset or tuple(n for n in reference.names if n not in OUTPUT)
    return study_curves(model, functions, trained, dataclasses.replace(config, subset=subset),
                        rest=reference.masks, seed=seed, ranked=ranked)


def _data(config: Config, cifar: dict):
    """(training data, its indices for pretraining and masks, evaluation data). The CNN: 80% of
    the training images, evaluated on the other 20% ("iid"), normalised by their own statistics.
    The ResNet: all training images, evaluated on the official test set, fixed statistics."""
    images, labels = cifar["train"]
    if config.train_images < len(labels):  # image folders are sorted by class: a balanced subset
        subset = balanced_subset(labels, config.train_images)
        images, labels = images[subset], labels[subset]
    if config.model == "resnet":
        data = ImageClassData(images, labels, RESNET_MEAN, RESNET_STD)
        return data, torch.arange(len(labels)), ImageClassData(*cifar["test"], RESNET_MEAN, RESNET_STD)
    data = ImageClassData(images, labels, *channel_stats(images))
    train_idx, valid_idx = train_valid_split(len(labels))
    return data, train_idx, ImageClassData(images[valid_idx], labels[valid_idx], data.mean, data.std)


def _model(config: Config, classes: int, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if config.model == "resnet":
            return CifarResNet(classes, blocks=config.resnet_blocks)
        return SimpleCNN(classes, dropout=config.dropout)


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    cifar = load_cifar10(config.data, config.source)
    classes = len(cifar["classes"])
    data, train_idx, eval_set = _data(config, cifar)
    valid = fixed_batches(eval_set, 500)
    labels = data.labels

    def batches(indices: torch.Tensor, size: int, batch_seed: int):
        sampled = RandomBatches(IndexSubset(data, indices), size, batch_seed)
        if config.model != "resnet":
            return sampled
        black = -data.mean.view(3) / data.std.view(3)  # pad with what a black pixel is after normalising
        return AugmentedBatches(sampled, batch_seed + 7_919, fill=black)

    model = _model(config, classes, seed).to(device)
    recipe = dict(lr=config.lr, grad_clip=config.grad_clip)
    if config.model == "resnet":
        drops_at = tuple(int(config.pretrain_steps * f) for f in RESNET_LR_DROPS)
        recipe = dict(lr=config.lr, lr_drops=drops_at, **RESNET_PRETRAIN)
    with run_dir.timed("pretrain"):
        pretrain(model, batches(train_idx, config.batch_size, seed), F.cross_entropy, run_dir,
                 steps=config.pretrain_steps, checkpoint_every=config.checkpoint_every, progress=progress,
                 seed=seed, **recipe)

    def train(specs: list[tuple[str, torch.Tensor, int]], fixed: Masks | None = None) -> dict[str, TrainedMask]:
        """The masks (name, training indices, seed) of one stage; with `fixed`, those tensors keep it."""
        stages = [Stage(name, batches(indices, config.mask_batch_size, stage_seed), F.cross_entropy, stage_seed)
                  for name, indices, stage_seed in specs]
        return mask_stages(run_dir, model, stages, config.mask, config.execution, progress=progress,
                           checkpoint_every=config.checkpoint_every, **({"fixed_masks": fixed} if fixed else {}))

    train_labels = labels[train_idx]
    reference_trained = train([("reference", train_idx, seed * 100)])["reference"]
    reference = reference_trained.masks
    kept_output = reference.only(OUTPUT)
    # the class-removed masks depend on the reference only: one joint stage
    without_trained = train([(f"without-{k}", train_idx[train_labels != k], seed * 100 + k + 1)
                             for k in range(classes)], kept_output)
    without = [Masks({**t.masks, **kept_output}) for t in without_trained.values()]
    c_ref, per_class = class_removal(model, reference, without, valid, classes, config.random_draws, seed)
    removal, class_masks = [], {}
    for k, (mask, (c_k, dropped, controls)) in enumerate(zip(without, per_class)):
        class_masks[f"without {cifar['classes'][k]}"] = mask
        removal.append({"class": cifar["classes"][k], **dropped, "difference": (c_k - c_ref).tolist(),
                        "reference_kept": (mask & reference).count() / max(reference.count(), 1), **controls})

    pair = torch.isin(train_labels, torch.tensor(config.stability_classes))
    stable = [t.masks for t in train([("stability-a", train_idx[pair], seed * 100 + 50),
                                      ("stability-b", train_idx[pair], seed * 100 + 51)]).values()]
    stability = iou(*stable)
    stability_chance = overlap_chance(*stable)["total"]["iou_chance"]  # random masks of the same per-layer sizes
    # The CNN's early half: its first three convolutions; the ResNet's: the first half of the tensors.
    early = ([n for n in reference if n.startswith(("convs.0.", "convs.1.", "convs.2."))]
             if config.model == "cnn" else None)
    results = {"classes": cifar["classes"], "reference_confusion": c_ref.tolist(), "removal": removal,
               "removal_modes": removal_in_modes(model, reference, without, valid, cifar["classes"],
                                                 config.random_draws, seed, config.mask.removal, removal),
               "overlap": overlap_matrix(class_masks), "units": unit_statistics(without_trained),
               "model": config.model, "evaluated_on": "test" if config.model == "resnet" else "iid",
               "stability_iou": stability, "stability_iou_chance": stability_chance,
               "stability_classes": [cifar["classes"][c] for c in config.stability_classes],
               "half_mask": half_mask_test(model, reference, valid, lambda out, y: out.argmax(-1) == y, early=early)}
    if config.curves.enabled:
        functions = class_curve_functions(eval_set, train_labels, train_idx, cifar["classes"],
                                          lambda indices, s: batches(indices, config.mask_batch_size, s), config, seed)
        with run_dir.timed("curves"):
            results["curves"] = class_curves(model, reference_trained, without_trained, functions, cifar["classes"],
                                             config.curves, seed)
    return {**results, "timings": run_dir.timings()}
