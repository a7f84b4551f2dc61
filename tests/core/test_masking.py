import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import Masks, masked_call
from modmask.models import MLP, EncoderLayer, RepeatLSTMClassifier

from test_training import make_trainer


def test_all_ones_mask_reproduces_the_model_exactly():
    model = MLP(5, [7, 6], 3).eval()
    x = torch.randn(9, 5)
    ones = Masks({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()})
    assert torch.equal(masked_call(model, ones, x), model(x))


def test_masking_one_weight_equals_zeroing_it_by_hand():
    model = MLP(5, [7], 3).eval()
    x = torch.randn(9, 5)
    mask = torch.ones(7, 5, dtype=torch.bool)
    mask[2, 3] = False
    out = masked_call(model, Masks({"layers.0.weight": mask}), x)
    with torch.no_grad():
        model.layers[0].weight[2, 3] = 0.0
    assert torch.equal(out, model(x))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def _models():
    bn = ConvBN()
    with torch.no_grad():  # non-trivial running statistics for eval mode
        bn.norm.running_mean.uniform_(-1, 1)
        bn.norm.running_var.uniform_(0.5, 2)
    return {
        "mlp": (MLP(6, [8, 8], 3), torch.randn(8, 6)),
        "cnn_batchnorm": (bn, torch.randn(8, 2, 5, 5)),
        "lstm": (RepeatLSTMClassifier(6, 3, hidden_size=8), torch.randn(8, 6)),
        "attention": (nn.Sequential(EncoderLayer(8, 2, 16), nn.Flatten(), nn.Linear(8 * 4, 3)),
                      torch.randn(8, 4, 8)),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_vmap_and_sequential_paths_agree_on_loss_and_gradients(name):
    model, x = _models()[name]
    model.eval()
    y = torch.randint(0, 3, (8,))
    results = {}
    for path in ("vmap", "sequential"):
        trainer = make_trainer(model, F.cross_entropy, (x, y), k=4, seed=11, path=path, grad_clip=None,
                               norms=True)
        losses = trainer.step([(x, y)])[0]
        results[path] = (losses["loss"], {n: l.grad.clone() for n, l in trainer.logits.items()})
        assert trainer.path == path
    (loss_v, grads_v), (loss_s, grads_s) = results["vmap"], results["sequential"]
    assert torch.allclose(loss_v, loss_s, atol=1e-6)
    for n in grads_v:
        assert torch.allclose(grads_v[n], grads_s[n], atol=1e-6), n
    assert any(g.abs().sum() > 0 for g in grads_v.values())


class FusedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def test_fused_lstm_falls_back_to_sequential_with_a_warning(caplog):
    model = FusedLSTM()
    with caplog.at_level(logging.WARNING):
        trainer = make_trainer(model, F.cross_entropy, (torch.randn(4, 3, 4), torch.randint(0, 2, (4,))), k=2)
    assert trainer.path == "sequential"
    assert "rnn (LSTM)" in caplog.text and "sequential" in caplog.text


def test_forcing_vmap_on_a_fused_lstm_names_the_module_and_the_fix():
    trainer = make_trainer(FusedLSTM(), F.cross_entropy, k=2, path="vmap")
    with pytest.raises(ValueError, match=r"rnn \(LSTM\).*path='sequential'"):
        trainer.prepare([(torch.randn(4, 3, 4), torch.randint(0, 2, (4,)))])


class CallCounter(nn.Module):
    """Scales its output by how often it has been called: one vmap call over the k samples sees one
    count, k separate calls see k different ones."""

    def __init__(self):
        super().__init__()
        self.layer, self.calls = nn.Linear(4, 3), 0

    def forward(self, x):
        self.calls += 1
        return self.layer(x) * self.calls


def test_a_model_vmap_runs_differently_falls_back_to_sequential_with_a_warning(caplog):
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with caplog.at_level(logging.WARNING, logger="modmask"):
        trainer = make_trainer(CallCounter(), F.cross_entropy, batch, k=4)
    assert trainer.path == "sequential"
    assert "torch.vmap gives different outputs from separate calls" in caplog.text
    assert "using the sequential path" in caplog.text
    trainer.step([batch])
    with pytest.raises(ValueError, match=r"different outputs from separate calls.*path='sequential'"):
        make_trainer(CallCounter(), F.cross_entropy, batch, k=4, path="vmap")
    with caplog.at_level(logging.WARNING, logger="modmask"):
        caplog.clear()
        assert make_trainer(MLP(4, [8], 3), F.cross_entropy, batch, k=4).path == "vmap"  # no reason to fall back
    assert not caplog.text


def test_flattening_an_output_makes_no_reference_cycle():
    # a cycle would keep every step's outputs (a language model's logits) alive until the gc runs
    import gc
    import weakref

    from modmask.core.batches import flatten_output

    logits = torch.randn(4, 3)
    gone = weakref.ref(logits)
    gc.disable()
    try:
        tensors, rebuild = flatten_output({"logits": logits, "past": (logits, object())})
        assert rebuild([t + 1 for t in tensors])["past"][1] is None
        del tensors, rebuild, logits
        assert gone() is None
    finally:
        gc.enable()
