"""Mean removal (core/removal.py): every supported kind against the same computation done by hand
on a copy of the model, in evaluation and in training (vmap, sequential, K samples, sample groups,
joint masks, bf16), and every bad input refused before any work."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import MaskConfig, evaluate, masked_call, random_control, train_mask
from modmask.core.gumbel import UniformSource, hard_samples
from modmask.core.mask_config import Execution
from modmask.core.masks import Masks
from modmask.core.removal import mean_inputs, removal_modes
from modmask.core.training import MaskTrainer
from modmask.models import LSTM


def _random_masks(model, names, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=generator) > 0.5 for n in names}


def test_linear_with_and_without_bias_and_layer_norm_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3, bias=False), nn.LayerNorm(3))
    x = torch.randn(32, 5) + 1
    masks = _random_masks(model, ["0.weight", "0.bias", "2.weight", "3.weight", "3.bias"])
    out = masked_call(model, masks, x, removal="mean")
    with torch.no_grad():
        h = torch.relu(model[0](x))
        a = F.linear(x, model[0].weight * masks["0.weight"], model[0].bias  # a removed bias is put back whole
                     + (model[0].weight * ~masks["0.weight"]) @ x.mean(0))
        a = F.linear(torch.relu(a), model[2].weight * masks["2.weight"]) + (model[2].weight * ~masks["2.weight"]) @ h.mean(0)
        y = model[2](h)
        x_hat = F.layer_norm(y, (3,))
        g = model[3].weight
        expected = F.layer_norm(a, (3,), g * masks["3.weight"], model[3].bias + (g * ~masks["3.weight"]) * x_hat.mean(0))
    assert torch.allclose(out, expected, atol=1e-5)
    # zero removal is the paper's, and the default
    assert torch.equal(masked_call(model, masks, x), masked_call(model, masks, x, removal="zero"))
    assert not torch.allclose(out, masked_call(model, masks, x), atol=1e-3)


def test_convolution_per_input_channel_and_batch_norm_by_hand():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 2, groups=2))
    with torch.no_grad():  # statistics away from 0 and 1, so an error in them shows
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(16, 3, 6, 6) + 0.5
    masks = _random_masks(model, ["0.weight", "1.weight", "3.weight"], seed=2)
    out = masked_call(model, masks, x, removal="mean")
    with torch.no_grad():
        w0, w3, gamma = model[0].weight, model[3].weight, model[1].weight
        # without padding every position sees every kernel weight: the mean input is a constant image
        mu0 = x.mean((0, 2, 3))
        a = F.conv2d(x, w0 * masks["0.weight"]) + F.conv2d(mu0.view(1, 3, 1, 1).expand(1, 3, 3, 3),
                                                           w0 * ~masks["0.weight"])
        y1 = model[1](model[0](x))
        x_hat = (y1 - model[1].bias.view(1, -1, 1, 1)) / gamma.view(1, -1, 1, 1)
        bn = copy.deepcopy(model[1])
        bn.weight.copy_(gamma * masks["1.weight"])
        bn.bias.copy_(model[1].bias + gamma * ~masks["1.weight"] * x_hat.mean((0, 2, 3)))
        h = torch.relu(bn(a))
        h_full = torch.relu(y1)
        mu3 = h_full.mean((0, 2, 3))
        expected = F.conv2d(h, w3 * masks["3.weight"], model[3].bias, groups=2) + F.conv2d(
            mu3.view(1, 4, 1, 1).expand(1, 4, 2, 2), w3 * ~masks["3.weight"], groups=2)
    assert torch.allclose(out, expected, atol=1e-5)


def test_embedding_and_lstm_cells_by_hand():
    torch.manual_seed(2)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(6, 4)
            self.lstm = LSTM(4, 5, num_layers=1)
            self.output = nn.Linear(5, 3)

        def forward(self, ids):
            return self.output(self.lstm(self.embedding(ids))[0])

    model = Tagger()
    ids = torch.randint(0, 6, (8, 5))
    names = ["embedding.weight", "lstm.cells.0.weight_ih", "lstm.cells.0.weight_hh"]
    masks = _random_masks(model, names, seed=3)
    out = masked_call(model, masks, ids, removal="mean")
    with torch.no_grad():
        counts = torch.bincount(ids.flatten(), minlength=6).float() / ids.numel()
        E = model.embedding.weight
        x = F.embedding(ids, E * masks["embedding.weight"]) + counts @ (E * ~masks["embedding.weight"])
        cell = model.lstm.cells[0]
        x_full = model.embedding(ids)
        # the previous hidden states of the unmasked model, h_0 = 0 included
        states = model.lstm(x_full)[0]
        h_prev = torch.cat([torch.zeros(8, 1, 5), states[:, :-1]], 1)
        hand = copy.deepcopy(model.lstm)
        c = hand.cells[0]
        c.weight_ih.copy_(cell.weight_ih * masks["lstm.cells.0.weight_ih"])
        c.weight_hh.copy_(cell.weight_hh * masks["lstm.cells.0.weight_hh"])
        c.bias.copy_(cell.bias + (cell.weight_ih * ~masks["lstm.cells.0.weight_ih"]) @ x_full.reshape(-1, 4).mean(0)
                     + (cell.weight_hh * ~masks["lstm.cells.0.weight_hh"]) @ h_prev.reshape(-1, 5).mean(0))
        expected = model.output(hand(x)[0])
    assert torch.allclose(out, expected, atol=1e-5)


def _hand_loss(model, logits, uniforms, x, y, means):
    """The first step's loss by hand on a functional copy of a Linear-ReLU-Linear(no bias) network:
    straight-through samples (hard forward, soft gradient) and the offsets (W - W h) @ E[x]."""
    w0, b0, w2 = model[0].weight, model[0].bias, model[2].weight
    k = uniforms["0.weight"].shape[0]
    losses = []
    for j, (xs, ys) in enumerate(zip(x.chunk(k), y.chunk(k))):
        sampled = {}
        for name, w in (("0.weight", w0), ("2.weight", w2)):
            l, u = logits[name], uniforms[name][j]
            soft = torch.sigmoid(l + torch.logit((u.float() + 32768.5) / 65536))  # (the same, with its gradient)
            hard = hard_samples(l.reshape(1, -1), u.reshape(1, -1)).view(l.shape).float()
            sampled[name] = w * (hard + soft - soft.detach())
        a = F.linear(xs, sampled["0.weight"], b0 + (w0 - sampled["0.weight"]) @ means[0])
        out = F.linear(torch.relu(a), sampled["2.weight"]) + (w2 - sampled["2.weight"]) @ means[1]
        losses.append(F.cross_entropy(out, ys))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("path,groups", [("vmap", None), ("sequential", None), ("vmap", 2)])
def test_training_step_matches_the_computation_by_hand(path, groups):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x, y = torch.randn(32, 6) + 0.5, torch.randint(0, 3, (32,))
    reference = [(torch.randn(40, 6) + 1.0, None)]  # other data than the batch: its means are used
    config = MaskConfig(k=4, removal="mean", beta=0.0, grad_clip=None)
    trainer = MaskTrainer(model, F.cross_entropy, config, Execution(path=path, samples_per_pass=groups), seed=5,
                          reference=reference).prepare([(x, y)])
    uniforms = UniformSource(5).reserve(4, [(6, 8), (8, 3)])  # the trainer's noise (matrices stored transposed)
    drawn = {"0.weight": uniforms.take(0, 0, 4).transpose(1, 2), "2.weight": uniforms.take(1, 0, 4).transpose(1, 2)}
    loss = trainer.step([(x, y)])[0]["loss"]
    logits = {n: torch.full(p.shape, 2.0, requires_grad=True) for n, p in model.named_parameters() if p.dim() == 2}
    with torch.no_grad():
        xr = reference[0][0]
        means = [xr.mean(0), torch.relu(model[0](xr)).mean(0)]
    hand = _hand_loss(model, logits, drawn, x, y, means)
    hand.backward()
    assert torch.allclose(loss, hand.detach(), atol=1e-5)
    for name in logits:
        grad = trainer.logits[name].grad[0]
        grad = grad.t() if name in trainer.transposed else grad
        assert torch.allclose(grad, logits[name].grad, atol=1e-6), name


def test_masks_train_under_mean_removal_jointly_and_in_bf16():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 6)
    y = model(x).argmax(-1).detach()
    batches = [(x, y)]
    alone = [train_mask(model, batches, F.cross_entropy, steps=30, removal="mean", seed=s, progress=False)
             for s in (0, 1)]
    from modmask.core.training import train_masks
    joint = train_masks(model, [(batches, F.cross_entropy)] * 2, MaskConfig(steps=30, removal="mean"),
                        seeds=[0, 1], progress=False)
    for a, b in zip(alone, joint):  # each mask the same alone as together (its own reference: its batch)
        assert all(torch.allclose(a.logits[n], b.logits[n], atol=1e-5) for n in a.logits)
        assert a.removal == b.removal == "mean"
    low = train_mask(model, batches, F.cross_entropy, steps=30, removal="mean", precision="bf16", progress=False)
    assert all(torch.isfinite(l).all() for l in low.logits.values())


def test_trained_mask_records_its_mode(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,)))]
    trained = train_mask(model, batches, F.cross_entropy, steps=3, removal="0.*=zero,mean", progress=False)
    trained.save(tmp_path / "m.safetensors")
    from modmask import TrainedMask
    assert TrainedMask.load(tmp_path / "m.safetensors").removal == "0.*=zero,mean"


def test_evaluation_and_random_controls_take_a_mode_and_a_reference():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 6) + 1
    batches = [(x, model(x).argmax(-1).detach())]
    correct = lambda out, y: (out.argmax(-1) == y).float()
    masks = Masks(_random_masks(model, ["0.weight", "2.weight"], seed=6))
    reference = mean_inputs(model, batches, list(masks))
    by_batches = evaluate(model, masks, batches, correct, removal="mean")
    assert by_batches == evaluate(model, masks, batches, correct, removal="mean", reference=reference)
    assert by_batches == evaluate(model, masks, iter(batches), correct, removal="mean")  # an iterator is read twice
    zero = random_control(model, masks, batches, correct, draws=3, seed=1)
    mean = random_control(model, masks, batches, correct, draws=3, seed=1, removal="mean")
    assert zero["values"] != mean["values"]
    # rules per tensor: zero on the first layer, mean elsewhere, is each mode on its own tensors
    mixed = masked_call(model, masks, x, removal="0.*=zero,mean")
    with torch.no_grad():
        w0, w2 = model[0].weight, model[2].weight
        hidden = torch.relu(F.linear(x, w0 * masks["0.weight"], model[0].bias))
        by_hand = (F.linear(hidden, w2 * masks["2.weight"], model[2].bias)
                   + (w2 * ~masks["2.weight"]) @ torch.relu(model[0](x)).mean(0))
    assert torch.allclose(mixed, by_hand, atol=1e-5)


def test_bad_input_is_refused_before_any_work():
    model = nn.Sequential(nn.Linear(4, 4), nn.Bilinear(4, 4, 2))
    with pytest.raises(ValueError, match=r"removal 'average'.*not one of zero, mean"):
        MaskConfig(removal="average")
    with pytest.raises(ValueError, match=r"gives no value for '1.weight'.*end the rules with a default"):
        removal_modes("0.*=mean", ["0.weight", "1.weight"])
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {"0.weight": torch.ones(4, 4, dtype=torch.bool)}
    with pytest.raises(ValueError, match="reference batches are empty"):
        masked_call(plain, masks, torch.randn(3, 4), removal="mean", reference=[])
    with pytest.raises(ValueError, match=r"reference batches do not fit the model"):
        masked_call(plain, masks, torch.randn(3, 4), removal="mean", reference=[(torch.randn(3, 5), None)])
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = nn.Bilinear(4, 4, 2)

        def forward(self, a, b):
            return self.pair(a, b)

    pair = Pair()
    with pytest.raises(ValueError, match=r"cannot tell what 1 parameter\(s\) multiply: pair.weight \(Bilinear\).*"
                                         r"nn.Linear.*removal='<pattern>=zero,mean'"):
        mean_inputs(pair, [((torch.randn(3, 4), torch.randn(3, 4)), None)], ["pair.weight"])
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match=r"used by more than one layer"):
        mean_inputs(tied, [(torch.randint(0, 5, (3,)), None)], ["0.weight"])
    with pytest.raises(ValueError, match=r"mean removal's reference"):  # the trainer reads it in prepare, at step 0
        train_mask(pair, [((torch.randn(8, 4), torch.randn(8, 4)), torch.randn(8, 2))], F.mse_loss, steps=2,
                   removal="mean", parameters="pair.weight", progress=False)
