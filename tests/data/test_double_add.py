import torch

from modmask.data.arithmetic import DoubleAddData, only_pair, pair_outputs


def test_double_add_encoding_of_a_worked_example():
    data = DoubleAddData(torch.tensor([[37, 45, 99, 2]]))
    inputs, targets = data.encode(slice(None))
    assert inputs.shape == (1, 80)
    # pair 1: 37 + 45 = 82 -> (2, 8); pair 2: 99 + 2 = 101 -> 1 -> (1, 0)
    assert targets.tolist() == [[2, 8, 1, 0]]
    hot = inputs[0].nonzero().flatten().tolist()
    assert hot == [7, 13, 25, 34, 40 + 9, 50 + 9, 60 + 2, 70 + 0]


def test_only_pair_zeroes_the_other_pair_and_pair_outputs_slices():
    inputs, targets = DoubleAddData.generate("valid", 5).encode(slice(None))
    first = only_pair(inputs, 0)
    assert torch.equal(first[:, :40], inputs[:, :40]) and first[:, 40:].abs().sum() == 0
    outputs = torch.arange(40.0).expand(5, 40)
    logits, digits = pair_outputs(outputs, targets, 1)
    assert logits[0, 0] == 20 and torch.equal(digits, targets[:, 2:])
