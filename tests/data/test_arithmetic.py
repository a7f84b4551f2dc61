import torch

from modmask.data.arithmetic import ADD, MUL, AddMulData, digit_loss, digits, digits_correct
from modmask.data.sampling import RandomBatches, fixed_batches


def test_encoding_of_worked_examples():
    data = AddMulData(torch.tensor([37, 99]), torch.tensor([45, 99]), torch.tensor([ADD, MUL]))
    inputs, targets = data.encode(slice(None))
    assert inputs.shape == (2, 42) and targets.shape == (2, 2)
    # 37 + 45 = 82 -> digits (2, 8), least significant first
    assert targets[0].tolist() == [2, 8]
    # 99 * 99 = 9801 -> 1 mod 100 -> (1, 0)
    assert targets[1].tolist() == [1, 0]
    # one-hot blocks a0 a1 b0 b1, then op
    hot = [int(i) for i in inputs[0].nonzero().flatten()]
    assert hot == [7, 10 + 3, 20 + 5, 30 + 4, 40 + ADD]
    assert inputs[1, 40 + MUL] == 1 and inputs.sum(1).tolist() == [5.0, 5.0]


def test_generation_is_the_seeded_paper_set():
    a = AddMulData.generate("valid")
    b = AddMulData.generate("valid")
    assert len(a) == 10_000 and torch.equal(a.a, b.a) and torch.equal(a.op, b.op)
    assert not torch.equal(a.a[:100], AddMulData.generate("train", 100).a)
    assert a.a.min() >= 0 and a.a.max() <= 99 and set(a.op.tolist()) == {0, 1}
    assert set(a.subset(MUL).op.tolist()) == {MUL}


def test_digits_and_metrics():
    assert digits(torch.tensor([7, 42])).tolist() == [[7, 0], [2, 4]]
    targets = torch.tensor([[1, 2], [3, 4]])
    perfect = torch.nn.functional.one_hot(targets, 10).float().flatten(1) * 10
    assert digits_correct(perfect, targets).tolist() == [True, True]
    wrong = perfect.clone()
    wrong[1, 10 + 4] = -10
    assert digits_correct(wrong, targets).tolist() == [True, False]
    assert digit_loss(perfect, targets) < 1e-3


def test_random_batches_resume_from_state():
    data = AddMulData.generate("valid", 500)
    first = RandomBatches(data, 8, seed=3)
    next(first)
    state = first.state()
    expected = next(first)
    again = RandomBatches(data, 8, seed=99)
    again.load_state(state)
    assert torch.equal(next(again)[0], expected[0])
    assert sum(len(b[0]) for b in fixed_batches(data, 64)) == 500
