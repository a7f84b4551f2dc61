import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import TrainedMask, train_mask
from modmask.models import MLP


def _toy(seed=0):
    """Labels depend on inputs 0..3 only; inputs 4..11 are noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 12, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    model = MLP(12, [32], 2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        idx = torch.randint(0, 2048, (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model, x, y


def _batches(x, y, batch=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        yield x[idx], y[idx]


def test_mask_removes_the_weights_of_irrelevant_inputs_and_leaves_the_model_untouched():
    model, x, y = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = train_mask(model, _batches(x, y), F.cross_entropy, steps=1500, beta=0.05, progress=False)
    first = trained.masks["layers.0.weight"].float().mean(0)  # kept fraction per input column
    assert first[:4].min() > 2 * first[4:].max(), first
    assert first[4:].max() < 0.2
    assert set(trained.masks) == {"layers.0.weight", "layers.1.weight"}  # biases unmasked by default
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # the mode is restored


def test_same_seed_same_mask_and_logits_round_trip(tmp_path):
    model, x, y = _toy()
    a = train_mask(model, _batches(x, y), F.cross_entropy, steps=30, seed=3, progress=False)
    b = train_mask(model, _batches(x, y), F.cross_entropy, steps=30, seed=3, progress=False)
    assert all(torch.equal(a.logits[n], b.logits[n]) for n in a.logits)
    a.save(tmp_path / "logits.safetensors")
    loaded = TrainedMask.load(tmp_path / "logits.safetensors", model)
    assert loaded.masks == a.masks and list(loaded.logits) == list(a.logits)


def test_original_clipping_quirk_runs_without_touching_the_model():
    model, x, y = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = train_mask(model, _batches(x, y), F.cross_entropy, steps=20, original_clipping=True,
                         progress=False)
    assert trained.masks.count() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_clear_errors_for_bad_input():
    model, x, y = _toy()
    batches = _batches(x, y)
    with pytest.raises(ValueError, match="unknown parameter name"):
        train_mask(model, batches, F.cross_entropy, steps=1, parameters=["layers.9.weight"])
    with pytest.raises(ValueError, match="selects no parameter"):
        train_mask(model, batches, F.cross_entropy, steps=1, parameters="*.nothing")
    with pytest.raises(ValueError, match="multiple of k=4"):
        train_mask(model, [(x[:3], y[:3])], F.cross_entropy, steps=1)
    with pytest.raises(FloatingPointError, match="step 0"):
        train_mask(model, batches, lambda out, t: out.sum() * float("nan"), steps=1, progress=False)


def test_parameter_selection_by_glob_predicate_and_biases():
    model, x, y = _toy()
    batches = _batches(x, y)
    glob = train_mask(model, batches, F.cross_entropy, steps=1, parameters="layers.1.*", progress=False)
    assert set(glob.logits) == {"layers.1.weight", "layers.1.bias"}
    pred = train_mask(model, batches, F.cross_entropy, steps=1, progress=False,
                      parameters=lambda name, p: name.endswith("bias"))
    assert set(pred.logits) == {"layers.0.bias", "layers.1.bias"}
    every = train_mask(model, batches, F.cross_entropy, steps=1, biases=True, progress=False)
    assert len(every.logits) == 4


def test_embeddings_are_never_masked_by_default():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    batches = [(torch.randint(0, 10, (8, 2)), torch.randint(0, 2, (8,)))]
    trained = train_mask(model, batches, F.cross_entropy, steps=2, progress=False)
    assert set(trained.logits) == {"2.weight"}
