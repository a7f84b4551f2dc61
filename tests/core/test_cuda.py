"""The GPU path: the same step as on the CPU, the memory plan against the device, bf16.

Marked `cuda`: skipped without a GPU; benchmarks/device_check.sh runs them on one.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import iou, memory_plan, train_mask
from modmask.core import training
from modmask.core.gumbel import UniformSource
from modmask.models import MLP, EncoderLayer

from test_training import _batches, _toy, make_trainer

pytestmark = pytest.mark.cuda


def _steps(model, x, y, device, steps=3, host_bits=False, **options):
    model = copy.deepcopy(model).to(device).eval()
    batch = (x.to(device), y.to(device))
    trainer = make_trainer(model, F.cross_entropy, batch, k=4, seed=3, lr=0.1, **options)
    if host_bits:  # the CPU's noise, copied to the GPU: the two runs see the same samples
        trainer.sources[0] = UniformSource(3, device, host_bits=True)
    for _ in range(steps):
        trainer.step([batch])
    return {n: l.detach().cpu() for n, l in trainer.logits.items()}


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_mask_step_on_cuda_equals_the_cpu(path):
    torch.manual_seed(0)
    model = nn.Sequential(EncoderLayer(16, 2, 32), nn.Flatten(), nn.Linear(16 * 5, 3))
    x, y = torch.randn(8, 5, 16), torch.randint(0, 3, (8,))
    cpu = _steps(model, x, y, "cpu", path=path)
    gpu = _steps(model, x, y, "cuda", host_bits=True, path=path)
    for n in cpu:
        assert torch.allclose(cpu[n], gpu[n], atol=1e-4), n


def test_groups_on_cuda_equal_one_pass():
    model, x, y = MLP(6, [64, 64], 3), torch.randn(16, 6), torch.randint(0, 3, (16,))
    full = _steps(model, x, y, "cuda")
    for group in (1, 2):
        grouped = _steps(model, x, y, "cuda", samples_per_pass=group)
        for n in full:
            assert torch.allclose(full[n], grouped[n], atol=1e-4), (group, n)  # a noise mismatch: ~lr


def test_memory_plan_matches_the_peak_allocated_on_the_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(*(EncoderLayer(512, 8, 2048) for _ in range(4))).cuda().eval()
    x = torch.randn(16, 64, 512, device="cuda")
    loss = lambda out, t: (out - t).pow(2).mean()  # noqa: E731
    for samples in (4, 1):
        trainer = make_trainer(model, loss, (x, x), k=4, samples_per_pass=samples)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            trainer.step([(x, x)])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - x.nbytes  # the batch (inputs = targets) is not in the plan
        assert 0.75 < trainer.plan.total / peak < 1.25, (samples, trainer.plan.summary(), peak / 2**20)
        del trainer


def test_a_plan_that_does_not_fit_stops_before_the_first_step(monkeypatch):
    model = MLP(6, [512, 512], 3).cuda()
    x, y = torch.randn(16, 6, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    plan = memory_plan(model, k=4, batch=(x, y))
    # pretend the device has room for the plan at samples_per_pass=2 only
    room = int(plan.with_settings(samples_per_pass=2).needed / 0.85)
    monkeypatch.setattr(training, "free_memory", lambda device: room)
    trainer = make_trainer(model, F.cross_entropy, k=4)
    with pytest.raises(MemoryError, match=r"samples_per_pass=2 .*precision='bf16'.*fewer selected tensors"):
        trainer.prepare([(x, y)])
    assert trainer.path is None and all(l.grad is None for l in trainer.logits.values())  # no step was taken
    auto = make_trainer(model, F.cross_entropy, (x, y), k=4, samples_per_pass="auto")
    auto.step([(x, y)])
    assert auto.samples_per_pass == 2


def test_bf16_on_cuda_learns_the_masks_fp32_learns():
    model, x, y = _toy()
    model = model.cuda()
    x, y = x.cuda(), y.cuda()
    fp32 = train_mask(model, _batches(x, y), F.cross_entropy, steps=300, beta=0.05, progress=False)
    bf16 = train_mask(model, _batches(x, y), F.cross_entropy, steps=300, beta=0.05, progress=False,
                      precision="bf16")
    assert fp32.masks.density() < 0.6
    assert iou(fp32.masks, bf16.masks) > 0.95
