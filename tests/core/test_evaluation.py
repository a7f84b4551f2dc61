"""Half masks against hand computations on a tiny model."""

import pytest
import torch
from torch import nn

from modmask import Masks, evaluate, half_masks, split_layers
from modmask.experiments.study import half_mask_test


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
