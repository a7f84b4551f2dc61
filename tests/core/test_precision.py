"""Mixed precision: the forward in bf16 (autocast), logits, Adam and the regulariser in fp32."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import iou, train_mask
from modmask.core.memory import autocast
from modmask.models import EncoderLayer

from test_training import _batches, _toy, make_trainer


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
    trainer = make_trainer(model, F.cross_entropy, (x[:8], y[:8]), precision="bf16")
    trainer.step([(x[:8], y[:8])])
    assert seen[-1] == torch.bfloat16
    assert trainer.plan.parts["masked copies"] == 4 * 2 * trainer.plan.masked
    assert all(l.dtype == torch.float32 and l.grad.dtype == torch.float32 for l in trainer.logits.values())


def test_bad_precision_names_the_setting():
    model, _, _ = _toy()
    with pytest.raises(ValueError, match="precision must be one of"):
        make_trainer(model, F.cross_entropy, precision="fp16")
    with pytest.raises(ValueError, match="precision='bf16' needs torch.autocast"):
        autocast(torch.device("meta"), torch.bfloat16)


def _first_step(model, batch, path, precision, seed=2):
    trainer = make_trainer(model, F.cross_entropy, batch, path=path, biases=True, seed=seed, precision=precision,
                           grad_clip=None)
    loss = trainer.step([batch])[0]["loss"]
    assert trainer.path == path
    return loss, torch.cat([l.grad.flatten() for l in trainer.logits.values()])


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_bf16_gives_fp32s_loss_and_logit_gradients_on_both_paths(path):
    """Layer norms and biases masked too. The bf16 step's gradients are fp32's up to bf16 rounding
    (about 1 %); a step with any other mask samples (here: other noise) is off by about 100 %."""
    torch.manual_seed(0)
    model = nn.Sequential(EncoderLayer(8, 2, 16), nn.Flatten(), nn.Linear(8 * 4, 3)).eval()
    batch = torch.randn(8, 4, 8), torch.randint(0, 3, (8,))
    full_loss, full = _first_step(model, batch, path, "fp32")
    half_loss, half = _first_step(model, batch, path, "bf16")
    _, other = _first_step(model, batch, path, "fp32", seed=3)

    def error(grads):
        return float((grads - full).norm() / full.norm())

    assert half.dtype == torch.float32 and error(half) < 0.03, error(half)
    assert error(other) > 0.3, error(other)  # the tolerance tells masks apart
    assert torch.isclose(full_loss, half_loss, rtol=0.01), (full_loss, half_loss)  # (other masks: about 3 % off)
