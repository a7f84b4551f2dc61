"""Cost of one joint step of M masks (core/joint.py) against M separate steps, in one process.

    python benchmarks/joint_step.py [--steps 20]

Prints `model=mlp-400-400-200 masks=3 joint_ms=.. separate_ms=.. ratio=..` (the add/mul FNN's
three masks, batch 128, K=4) and the same for the CIFAR simple CNN with 11 masks (the reference
and ten class-removed masks' worth, batch 128). The masks' steps are interleaved so both see the
same machine; the ratio is joint / separate (below 1: the joint pass is faster).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from modmask.core.joint import JointMaskTrainer
from modmask.core.training import MaskTrainer
from modmask.data.arithmetic import digit_loss
from modmask.models import MLP, SimpleCNN


def _cases():
    generator = torch.Generator().manual_seed(0)
    yield ("mlp-400-400-200", MLP(42, (400, 400, 200), 20), digit_loss, 3,
           lambda: (torch.randn(128, 42, generator=generator), torch.randint(0, 10, (128, 2), generator=generator)))
    yield ("cnn", SimpleCNN(10), F.cross_entropy, 11,
           lambda: (torch.randn(128, 3, 32, 32, generator=generator), torch.randint(0, 10, (128,), generator=generator)))


def _time(step, batches, steps: int) -> float:
    for batch in batches[:2]:  # warm-up
        step(batch)
    start = time.perf_counter()
    for batch in batches[2:steps + 2]:
        step(batch)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    for name, model, loss, masks, batch in _cases():
        model.eval()
        data = [[batch() for _ in range(masks)] for _ in range(args.steps + 2)]
        separate = [MaskTrainer(model, loss, seed=i) for i in range(masks)]
        joint = JointMaskTrainer([MaskTrainer(model, loss, seed=i) for i in range(masks)])
        separate_ms = _time(lambda bs: [t.step(b) for t, b in zip(separate, bs)], data, args.steps)
        joint_ms = _time(joint.step, data, args.steps)
        print(f"model={name} masks={masks} joint_ms={joint_ms:.1f} separate_ms={separate_ms:.1f} "
              f"ratio={joint_ms / separate_ms:.2f}", flush=True)


if __name__ == "__main__":
    main()
