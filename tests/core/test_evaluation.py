"""Half masks and the random control drawn within a mask, against hand computations on tiny models."""

import pytest
import torch
from torch import nn

from modmask import Masks, evaluate, half_masks, inverse, random_control, random_masks, split_layers
from modmask.core import evaluation
from modmask.runs.study import half_mask_test


def _two_layers():
    """y = W2 W1 x without biases: W1 = [[1, 2], [3, 4]], W2 = [[1, 1]]."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    return model


def _output(outputs, targets):
    return outputs[:, 0]


def test_half_masks_and_their_drops_by_hand():
    model = _two_layers()
    full = Masks({"0.weight": torch.tensor([[True, False], [True, True]]),  # removes W1[0, 1] = 2
                  "1.weight": torch.tensor([[True, False]])})  # removes W2[0, 1]
    early, late = split_layers(list(full))
    assert (early, late) == (["0.weight"], ["1.weight"])
    early_mask, late_mask = half_masks(full, early)
    assert early_mask == Masks({"0.weight": full["0.weight"]}) and late_mask == Masks({"1.weight": full["1.weight"]})
    batches = [(torch.tensor([[1.0, 1.0]]), None)]
    # x = [1, 1]. Whole mask: h = [1, 7], y = 1 * 1 + 0 * 7 = 1. Early tensors masked only (W2 full):
    # h = [1, 7], y = 8. Late tensors masked only (W1 full): h = [3, 7], y = 3. Unmasked: y = 10.
    assert evaluate(model, full, batches, _output) == 1.0
    assert evaluate(model, early_mask, batches, _output) == 8.0
    assert evaluate(model, late_mask, batches, _output) == 3.0
    assert evaluate(model, None, batches, _output) == 10.0
    result = half_mask_test(model, full, batches, _output)
    assert result == {"layers_early": ["0.weight"], "layers_late": ["1.weight"], "full_mask_accuracy": 100.0,
                      "early_masked_drop": (1 - 8) * 100.0, "late_masked_drop": (1 - 3) * 100.0}


def test_split_layers_rounds_the_early_half_as_asked():
    names = ["a", "b", "c"]
    assert split_layers(names) == (["a", "b"], ["c"])
    assert split_layers(names, "floor") == (["a"], ["b", "c"])
    early, late = half_masks(Masks({n: torch.ones(2, dtype=torch.bool) for n in names}), ["a", "c"])
    assert list(early) == ["a", "c"] and list(late) == ["b"]


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(20, 6)
    return model, [(x[:10], None), (x[10:], None)]


def _summed(outputs, targets):
    return outputs.sum(1)  # changes with every weight: different draws give different values


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "remove"])
def test_random_control_within_draws_only_inside_within_and_is_evaluated_as_drawn(monkeypatch, keep):
    model, batches = _model_and_data()
    g = torch.Generator().manual_seed(3)
    within = Masks({"0.weight": torch.rand(8, 6, generator=g) < 0.5, "2.weight": torch.rand(3, 8, generator=g) < 0.5})
    masks = random_masks(within, 5) & Masks({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in within.items()})
    assert 0 < masks.count() < within.count()  # fewer than within keeps: draws can differ
    evaluated = []
    real_evaluate = evaluation.evaluate

    def spy(model_, condition, *args, **kwargs):
        evaluated.append(condition)
        return real_evaluate(model_, condition, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    result = random_control(model, masks, batches, _summed, draws=4, seed=11, keep=keep, within=within)
    monkeypatch.undo()
    assert len(evaluated) == 4
    drawn = evaluated if keep else [~condition for condition in evaluated]  # a removal evaluates the inverse
    for mask in drawn:
        assert mask.counts() == masks.counts()  # as many weights as the mask, tensor by tensor
        assert {n: m.shape for n, m in mask.items()} == {n: m.shape for n, m in masks.items()}
        assert (mask - within).count() == 0  # every drawn weight is one `within` keeps
    assert len({tuple(torch.cat([m.flatten() for m in mask.values()]).tolist()) for mask in drawn}) == 4
    # the control's values are those masks evaluated by hand, and the seeded draws within `within`
    assert result["values"] == [evaluate(model, condition, batches, _summed) for condition in evaluated]
    generator = torch.Generator().manual_seed(11)
    by_hand = [random_masks(masks, generator, within) for _ in range(4)]
    assert drawn == by_hand
    expected = [evaluate(model, mask if keep else inverse(mask), batches, _summed) for mask in by_hand]
    assert result["values"] == pytest.approx(expected, abs=0) and result["mean"] == pytest.approx(sum(expected) / 4)
