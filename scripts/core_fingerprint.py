"""The core trainer's masks in every execution variant, as hashes of the learned logits.

    python scripts/core_fingerprint.py > core.json     # then: diff before.json after.json

A behaviour-preserving change of the trainer must print the same hashes before and after: single
masks and joint stages, vmap and sequential paths, sample groups, the original clipping, trainable
weights, fixed masks, train mode with dropout, bf16 (the smoke presets' fingerprint covers the studies).
"""

import hashlib
import json

import torch
from torch import nn
from torch.nn import functional as F

from modmask import MaskConfig, train_mask

try:  # the one trainer
    from modmask import Execution, train_masks
except ImportError:  # before it (modmask <= 0.1's two trainers), for a fingerprint of the old code
    from modmask.core.joint import train_masks_jointly as train_masks
    Execution = None


class Recurrent(nn.Module):
    """nn.LSTM: vmap cannot batch it, so masks train on the sequential path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.out = nn.LSTM(6, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.lstm(x)[0][:, -1])


def mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 3))


def batches(seed: int, shape=(6,), n: int = 16):
    generator = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(n, *shape, generator=generator)
        yield x, (x.sum(tuple(range(1, x.dim()))) > 0).long() + (x.flatten(1)[:, 0] > 1).long()


def digest(trained) -> str:
    h = hashlib.sha256()
    for name, logits in trained.logits.items():
        h.update(name.encode())
        h.update(logits.detach().float().contiguous().numpy().tobytes())
    if trained.weights:
        for name, weights in trained.weights.items():
            h.update(weights.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def single(model, data=None, **options):
    return digest(train_mask(model, data or batches(0), F.cross_entropy, steps=60, lr=0.1, beta=3e-3, seed=4,
                             progress=False, **options))


def joint(model, shape=(6,), execution=None, **settings):
    configs = [MaskConfig(steps=60, lr=lr, beta=beta, **({} if Execution else execution or {}), **settings)
               for lr, beta in ((0.1, 3e-3), (0.05, 1e-2), (0.1, 0.0))]
    options = {"execution": Execution(**(execution or {}))} if Execution else {}
    trained = train_masks(model, [(batches(i, shape), F.cross_entropy) for i in range(3)], configs, seeds=[4, 5, 6],
                          progress=False, **options)
    return [digest(t) for t in trained]


def main() -> None:
    torch.set_num_threads(1)
    model = mlp()
    prints = {
        "single vmap": single(model),
        "single sequential": single(model, path="sequential"),
        "single groups": single(model, samples_per_pass=2),
        "single original clipping": single(model, original_clipping=True),
        "single no clipping": single(model, grad_clip=None),
        "single tight clipping": single(model, grad_clip=0.01),
        "single bf16": single(model, precision="bf16"),
        "single biases": single(model, biases=True, k=2),
        "single fixed masks": single(model, fixed_masks={"5.weight": torch.rand(3, 32) > 0.5}),
        "single trainable": single(model, trainable={"3.weight": torch.rand(32, 32) > 0.5}),
        "single train mode": single(mlp(0.2), mode="train"),
        "single lstm sequential": single(Recurrent(), data=batches(0, (5, 6))),
        "joint vmap": joint(model),
        "joint sequential": joint(model, execution={"path": "sequential"}),
        "joint groups": joint(model, execution={"samples_per_pass": 2}),
        "joint tight clipping": joint(model, grad_clip=0.01),
        "joint lstm": joint(Recurrent(), shape=(5, 6)),
    }
    print(json.dumps(prints, indent=1))


if __name__ == "__main__":
    main()
