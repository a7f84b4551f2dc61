"""Unit masks (core/units.py): rows and columns (one logit per output or input unit, broadcast to its
weights), read back as weights, saved with the mask, and refused where they do not fit."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import MaskConfig, TrainedMask, evaluate, train_mask
from modmask.core.training import MaskTrainer
from modmask.core.units import plan_units


def _toy(seed=0, examples=512):
    """The label is whether inputs 0..3 sum above 0; inputs 4..11 are noise. A network trained on it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(examples, 12, generator=generator)
    y = (x[:, :4].sum(-1) > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def test_column_masks_find_the_inputs_the_function_reads():
    model, x, y = _toy()
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    trained = train_mask(model, batches, F.cross_entropy, steps=600, lr=0.05, beta=5e-3, granularity="0.weight=column,weight",
                         progress=False)
    columns = trained.unit_masks["0.weight"]
    assert columns.shape == (12,)
    assert columns[:4].all()  # the four inputs the label is made of
    assert columns[4:].float().mean() < 0.5  # most noise inputs removed
    weights = trained.masks["0.weight"]  # read as weights: whole columns
    assert torch.equal(weights, columns.expand(32, 12))
    correct = lambda out, t: (out.argmax(-1) == t).float()  # noqa: E731
    assert evaluate(model, trained.masks, batches, correct) > 0.9
    assert trained.masks["2.weight"].shape == (2, 32)  # weight granularity elsewhere


def test_row_masks_train_on_both_paths_alike_and_round_trip(tmp_path):
    model, x, y = _toy(1)
    config = MaskConfig(steps=20, granularity="row", k=4)
    runs = [train_mask(model, [(x[:128], y[:128])], F.cross_entropy, config, path=path, progress=False)
            for path in ("vmap", "sequential")]
    for name in runs[0].logits:
        assert torch.allclose(runs[0].logits[name], runs[1].logits[name], atol=1e-5)
    assert runs[0].logits["0.weight"].shape == (32,) and runs[0].logits["2.weight"].shape == (2,)
    path = tmp_path / "rows.safetensors"
    runs[0].save(path)
    loaded = TrainedMask.load(path, model)
    assert [u.name for u in loaded.units] == ["0.weight", "2.weight"]
    assert all(torch.equal(loaded.masks[n], runs[0].masks[n]) for n in runs[0].masks)


def test_a_unit_weighs_the_weights_it_covers():
    """The regulariser's force on a unit's logit is its weight count's: with no task gradient (a
    constant loss), one step moves a row logit of 12 weights as 12 weight logits would move one."""
    model, x, y = _toy(2)
    zero_loss = lambda out, t: out.sum() * 0.0  # noqa: E731
    trainer = MaskTrainer(model, zero_loss, MaskConfig(granularity="0.weight=row,weight", beta=1.0,
                                                        grad_clip=None), seed=0).prepare([(x[:64], y[:64])])
    trainer.step([(x[:64], y[:64])])
    row, weight = trainer.logits["0.weight"].grad[0], trainer.logits["2.weight"].grad[0]
    assert torch.allclose(row, torch.full_like(row, 12.0) * weight.flatten()[0])
    assert trainer.density() == pytest.approx(1.0)


def test_granularities_that_do_not_fit_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"granularity 'unit'.*not one of weight, row, column, head, neuron"):
        MaskConfig(granularity="unit")
    with pytest.raises(ValueError, match=r"row masks need a matrix.*granularity 'weight'"):
        plan_units(model, ["0.weight", "1.weight"], "row")
