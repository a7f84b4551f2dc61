"""Training masks without labels: the KL to the full model, by hand and through train_mask."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import Masks, evaluate, kl_to_full, masked_call, random_masks, train_mask, with_full_outputs
from modmask.data.sampling import RandomBatches


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[4].weight.mul_(6)  # peaked output distributions, so removing weights shows in the KL
    return model


def _by_hand(masked_logits, full_logits, temperature=1.0):
    """KL(full || masked) by torch's kl_div: summed over classes, mean over every other dim."""
    log_q = F.log_softmax(masked_logits / temperature, -1)
    log_p = F.log_softmax(full_logits / temperature, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean()


def test_the_loss_is_zero_for_the_full_model_and_torchs_kl_div_otherwise():
    model = nn.Linear(6, 5)  # on [B, T, 6]: logits [B, T, 5], positions averaged like examples
    x = torch.randn(4, 3, 6)
    (inputs, reference), = list(with_full_outputs(model, [(x, None)]))
    assert inputs is x and torch.equal(reference, model(x).log_softmax(-1))  # rows line up with the inputs
    assert not reference.requires_grad
    ones = Masks({"weight": torch.ones(5, 6, dtype=torch.bool)})
    assert kl_to_full()(masked_call(model, ones, x), reference) == 0
    half = Masks({"weight": torch.rand(5, 6) > 0.5})
    masked = masked_call(model, half, x)
    loss = kl_to_full()(masked, reference)
    assert loss > 0 and torch.allclose(loss, _by_hand(masked, model(x)))
    tempered = kl_to_full(temperature=2.0)(masked, reference)
    assert torch.allclose(tempered, _by_hand(masked, model(x), 2.0)) and not torch.allclose(tempered, loss)
    # a class the full model rules out (log p = -inf) adds 0, not nan
    full = torch.tensor([[0.0, 1.0, -float("inf")]])
    q = torch.tensor([[0.5, 0.2, 3.0]])
    expected = (full.softmax(-1)[0, :2] * (full.log_softmax(-1)[0, :2] - q.log_softmax(-1)[0, :2])).sum()
    assert torch.allclose(kl_to_full()(q, full.log_softmax(-1)), expected)


def test_a_mask_trained_on_the_kl_reproduces_the_full_model_far_better_than_a_random_one():
    model = _mlp()
    x = torch.randn(256, 8)
    full = with_full_outputs(model, [x[i:i + 64] for i in range(0, 256, 64)])  # inputs alone, no labels
    trained = train_mask(model, full, kl_to_full(), steps=150, beta=3e-3, lr=0.05, samples_per_pass=2,
                         progress=False).masks
    kl = lambda outputs, reference: kl_to_full()(outputs, reference)[None]  # noqa: E731
    assert trained.density() < 0.5
    assert evaluate(model, None, full, kl) == 0
    assert evaluate(model, trained, full, kl) < 0.3 * evaluate(model, random_masks(trained, 0), full, kl)


class _Output(dict):
    """A Hugging Face-like output: a dict whose entries read as attributes (`out.logits`)."""

    def __getattr__(self, name):
        return self[name]


class _TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.head = nn.Embedding(10, 8), nn.Linear(8, 5)

    def forward(self, input_ids, attention_mask=None):
        return _Output(logits=self.head(self.embedding(input_ids)))


def test_dict_batches_and_an_output_extractor_work_end_to_end():
    model = _TokenModel()
    logits = lambda o: o.logits  # noqa: E731
    batches = [{"input_ids": torch.randint(0, 10, (4, 6))} for _ in range(2)]
    full = with_full_outputs(model, batches, output=logits)
    for (inputs, reference), batch in zip(full, batches):
        assert inputs is batch and reference.shape == (4, 6, 5)
    trained = train_mask(model, full, kl_to_full(output=logits), steps=5, progress=False)
    assert list(trained.masks) == ["head.weight"]
    pairs = with_full_outputs(model, [(b, None) for b in batches], output=logits)  # (inputs, targets) too
    assert all(torch.equal(a[1], b[1]) for a, b in zip(pairs, full))
    with pytest.raises(ValueError, match=r"the full model's output _Output\(logits: \[4, 6, 5\]\) gives _Output.*"
                                         r"pass `output`.*output=lambda o: o.logits"):
        next(iter(with_full_outputs(model, batches)))
    with pytest.raises(ValueError, match="the targets .* are not the full model's log-probabilities.*with_full_outputs"):
        kl_to_full(output=logits)(model(**batches[0]), None)


class _Numbers:
    """A dataset for RandomBatches: example i is the input [i, i, i, i] (float)."""

    def __len__(self):
        return 20

    def encode(self, indices):
        return indices.float()[:, None].expand(-1, 4), None


def test_the_wrapper_re_iterates_lists_and_carries_the_state_of_random_batches():
    model = nn.Linear(4, 3)
    listed = with_full_outputs(model, [torch.randn(2, 4), torch.randn(2, 4)])
    assert len(list(listed)) == len(list(listed)) == 2 and not hasattr(listed, "state")
    endless = with_full_outputs(model, RandomBatches(_Numbers(), 3, seed=0))
    state = endless.state()
    first = next(iter(endless))
    endless.load_state(state)
    again = next(iter(endless))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    dropout = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    (inputs, reference), = with_full_outputs(dropout, [torch.randn(6, 4)])
    assert dropout.training  # its own mode is restored
    assert torch.equal(reference, dropout.eval()(inputs).log_softmax(-1))  # computed in mode eval: no dropout
    with pytest.raises(ValueError, match="temperature must be positive"):
        kl_to_full(temperature=0)
    with pytest.raises(ValueError, match="model mode must be 'eval' or 'train'"):
        with_full_outputs(model, [], mode="test")
