"""Mixed precision: the forward in bf16 (autocast), logits, Adam and the regulariser in fp32."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import iou, train_mask
from modmask.core.memory import autocast
from modmask.core.training import MaskTrainer
from modmask.models import EncoderLayer

from test_training import _batches, _toy


def test_bf16_learns_the_masks_fp32_learns():
    model, x, y = _toy()
    fp32 = train_mask(model, _batches(x, y), F.cross_entropy, steps=300, beta=0.05, progress=False)
    bf16 = train_mask(model, _batches(x, y), F.cross_entropy, steps=300, beta=0.05, progress=False,
                      precision="bf16", samples_per_pass=2)
    assert fp32.masks.density() < 0.6  # the masks did move away from all-ones
    assert iou(fp32.masks, bf16.masks) > 0.95
    assert all(l.dtype == torch.float32 for l in bf16.logits.values())


def test_bf16_copies_take_half_the_memory_and_the_model_sees_bf16():
    model, x, y = _toy()
    seen = []
    model.layers[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer = MaskTrainer(model, F.cross_entropy, precision="bf16")
    trainer.step((x[:8], y[:8]))
    assert seen[-1] == torch.bfloat16
    assert trainer.plan.parts["masked copies"] == 4 * 2 * trainer.plan.masked
    assert all(l.dtype == torch.float32 and l.grad.dtype == torch.float32 for l in trainer.logits.values())


def test_bad_precision_names_the_setting():
    model, _, _ = _toy()
    with pytest.raises(ValueError, match="precision must be one of"):
        MaskTrainer(model, F.cross_entropy, precision="fp16")
    with pytest.raises(ValueError, match="precision='bf16' needs torch.autocast"):
        autocast(torch.device("meta"), torch.bfloat16)


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_bf16_runs_layer_norms_and_biases_on_both_paths(path):
    model = nn.Sequential(EncoderLayer(8, 2, 16), nn.Flatten(), nn.Linear(8 * 4, 3)).eval()
    x, y = torch.randn(8, 4, 8), torch.randint(0, 3, (8,))
    full = MaskTrainer(model, F.cross_entropy, path=path, biases=True, seed=2)
    half = MaskTrainer(model, F.cross_entropy, path=path, biases=True, seed=2, precision="bf16")
    a, b = full.step((x, y))["loss"], half.step((x, y))["loss"]
    assert half.path == path and torch.isclose(a, b, rtol=0.05), (a, b)
