"""Zero against mean removal on a BatchNorm CNN: a ResNet-8 (the CIFAR ResNet with one block per
stage) on CIFAR-10, one mask for the vehicle classes and one for the animals, through run_study.

    python scripts/bn_removal.py --out runs/bn-removal --seed 0 [--removal mean] [--pretrain-steps 1500]

BatchNorm in eval mode normalises with fixed statistics, so a zeroed weight's shift of the mean
pre-activation passes through every later layer unchanged: where mean removal should matter most
(issue: "Removal that tests the mask, not the damage"). The study's results.json holds the removal
table in both modes (results["removal_modes"]) beside random removal of the masks' sizes.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from modmask import Function, run_study
from modmask.core.curves import CurveConfig
from modmask.data.cifar import ImageClassData, load_cifar10
from modmask.data.sampling import IndexSubset, RandomBatches, fixed_batches
from modmask.experiments.cifar import RESNET_MEAN, RESNET_PRETRAIN, RESNET_STD
from modmask.experiments.pretrain import pretrain
from modmask.models import CifarResNet
from modmask.runs import RunDir

GROUPS = {"vehicles": (0, 1, 8, 9), "animals": (2, 3, 4, 5, 6, 7)}  # airplane, automobile, ship, truck / the rest


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--removal", default="zero", help="the mode the masks train in")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--mask-steps", type=int, default=300)
    parser.add_argument("--eval-images", type=int, default=1000, help="test images per group")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    cifar = load_cifar10(args.data)
    train = ImageClassData(*cifar["train"], RESNET_MEAN, RESNET_STD)
    test = ImageClassData(*cifar["test"], RESNET_MEAN, RESNET_STD)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = CifarResNet(10, blocks=1)
    run = RunDir(args.out)
    drops = (args.pretrain_steps // 2, args.pretrain_steps * 3 // 4)
    pretrain(model, RandomBatches(train, 128, args.seed), F.cross_entropy, run, steps=args.pretrain_steps, lr=0.1,
             lr_drops=drops, seed=args.seed, **RESNET_PRETRAIN)

    def group(data: ImageClassData, classes: tuple[int, ...], count: int | None = None) -> IndexSubset:
        indices = torch.nonzero(torch.isin(data.labels, torch.tensor(classes))).flatten()
        if count:  # a fixed random subset: image folders are sorted by class
            indices = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))[:count]].sort().values
        return IndexSubset(data, indices)

    correct = lambda out, y: (out.argmax(-1) == y).float()  # noqa: E731
    functions = [Function(name, RandomBatches(group(train, classes), 128, 1000 + args.seed),
                          fixed_batches(group(test, classes, args.eval_images), 500), F.cross_entropy, correct)
                 for name, classes in GROUPS.items()]
    run_study(model, functions, args.out, seed=args.seed, steps=args.mask_steps, lr=0.03, biases=True,
              removal=args.removal, random_draws=3, curves=CurveConfig(enabled=False))


if __name__ == "__main__":
    main()
