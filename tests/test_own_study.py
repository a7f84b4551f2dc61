"""A user's own study through the documented `run_study` entry point, on a tiny model."""

import json

import torch
from torch import nn
from torch.nn import functional as F

from modmask import Function, run_study


def _task(which, n=1024, seed=0):
    """Two functions of separate inputs: label = sign of x[0] (task a) or of x[1] (task b)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    gate = torch.zeros(n, 2)
    gate[:, which] = 1
    return torch.cat([x * gate, gate], 1), (x[:, which] > 0).long()


def _batches(which, seed):
    x, y = _task(which, seed=seed)
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, len(x), (64,), generator=g)
        yield x[idx], y[idx]


def test_run_study_writes_masks_tables_and_report(tmp_path):
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    mixed = [_batches(0, 1), _batches(1, 2)]
    for step in range(400):
        x, y = next(mixed[step % 2])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
    functions = [Function(f"task{i}", _batches(i, 10 + i), [_task(i, seed=20 + i)], F.cross_entropy, correct)
                 for i in (0, 1)]
    results = run_study(model, functions, tmp_path, steps=300, beta=0.02, progress=False)
    metric = results["metric"]
    assert metric["task0"]["task0"] > 0.9 and metric["task1"]["task1"] > 0.9
    # each inverse mask hurts its own function more than the other one
    assert metric["not task0"]["task0"] < metric["not task0"]["task1"]
    assert metric["not task1"]["task1"] < metric["not task1"]["task0"]
    for path in ["masks/task0.safetensors", "masks/task1.safetensors", "results.json", "report.md",
                 "figures/removal.png", "figures/iou_task0_task1.png", "figures/histogram.png"]:
        assert (tmp_path / path).exists(), path
    assert json.loads((tmp_path / "results.json").read_text())["masks"]["overlap"]["task0|task1"]
    assert "| not task0 |" in (tmp_path / "report.md").read_text()
