"""The baselines' importance scores against hand computations on tiny models, and their errors."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import BASELINES, importance, select_parameters, top_masks
from modmask.models.lstm import LSTM


def _batches(*shape, count=2, classes=None):
    """`count` batches of random inputs [*shape] (targets: class ids of dim 0, or None)."""
    return [(torch.randn(*shape), torch.randint(0, classes, shape[:1]) if classes else None) for _ in range(count)]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """The inputs [..., F] of all batches as rows [N, F]."""
    return x.reshape(-1, x.shape[-1])


def test_magnitude_is_the_absolute_weight():
    model = nn.Linear(3, 2)
    scores = importance(model, "magnitude", ["weight", "bias"])
    assert list(scores) == ["weight", "bias"]
    assert torch.equal(scores["weight"], model.weight.detach().abs())
    assert torch.equal(scores["bias"], model.bias.detach().abs())


def test_wanda_on_linear_layers_is_the_weight_times_its_input_column_norms():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    batches = _batches(5, 2, 4)  # 2 batches of 5 examples at 2 positions: 20 rows
    scores = importance(model, "wanda", select_parameters(model, biases=True), batches)
    x = torch.cat([_rows(x) for x, _ in batches])  # [20, 4]
    hidden = torch.relu(model[0](x)).detach()  # the second layer's input
    assert torch.allclose(scores["0.weight"], model[0].weight.abs() * x.norm(dim=0), rtol=1e-5)
    assert torch.allclose(scores["2.weight"], model[2].weight.abs() * hidden.norm(dim=0), rtol=1e-5)
    assert torch.allclose(scores["0.bias"], model[0].bias.abs() * math.sqrt(20), rtol=1e-5)


def test_wanda_on_a_grouped_conv2d_scores_each_input_channel_over_all_positions():
    model = nn.Conv2d(4, 6, 3, groups=2)  # output channels 0-2 read inputs 0-1, 3-5 read 2-3
    batches = _batches(4, 4, 5, 5)
    scores = importance(model, "wanda", ["weight", "bias"], batches)
    x = torch.cat([x for x, _ in batches])  # [8, 4, 5, 5]
    channel = x.pow(2).sum((0, 2, 3)).sqrt()  # [4]
    expected = torch.empty(6, 2, 3, 3)
    for out in range(6):
        for j in range(2):
            expected[out, j] = model.weight[out, j].abs() * channel[(out // 3) * 2 + j]
    assert torch.allclose(scores["weight"], expected, rtol=1e-5)
    assert torch.allclose(scores["bias"], model.bias.abs() * math.sqrt(8 * 9), rtol=1e-5)  # every output position (3 x 3)


def test_wanda_on_layer_norm_is_gamma_times_the_normalised_input_norm():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.5, -0.5, 0.0, 2.0, 1.0, -3.0]))  # a zero gamma scores 0
        model[1].bias.normal_()
    batches = _batches(5, 4)
    scores = importance(model, "wanda", ["1.weight", "1.bias"], batches)
    x_hat = F.layer_norm(model[0](torch.cat([x for x, _ in batches])), (6,)).detach()
    assert torch.allclose(scores["1.weight"], model[1].weight.abs() * x_hat.norm(dim=0), rtol=1e-4, atol=1e-6)
    assert scores["1.weight"][2] == 0
    assert torch.allclose(scores["1.bias"], model[1].bias.abs() * math.sqrt(10), rtol=1e-5)


def test_wanda_on_batch_norm_reads_the_channels_and_train_mode_leaves_the_running_statistics():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
        model[1].weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    batches = _batches(4, 2, 3, 3)
    scores = importance(model, "wanda", ["1.weight"], batches)
    h = model[0](torch.cat([x for x, _ in batches])).detach()  # [8, 3, 3, 3]
    bn = model[1]
    x_hat = (h - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
    assert torch.allclose(scores["1.weight"], bn.weight.abs() * x_hat.pow(2).sum((0, 2, 3)).sqrt(), rtol=1e-4)
    before = {n: b.clone() for n, b in model.named_buffers()}
    train = importance(model, "wanda", ["1.weight"], batches, mode="train")  # batch statistics, not running ones
    assert not torch.allclose(train["1.weight"], scores["1.weight"])
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())


def test_wanda_on_the_projects_lstm_reads_the_layer_inputs_and_the_previous_hidden_states():
    torch.manual_seed(1)
    lstm = LSTM(3, 4, num_layers=2)
    batches = _batches(5, 6, 3)  # [B, T, I]: 2 batches, 10 sequences of 6 steps
    scores = importance(lstm, "wanda", select_parameters(lstm, biases=True), batches)
    x = torch.cat([x for x, _ in batches])
    first = LSTM(3, 4, num_layers=1)
    first.cells[0] = lstm.cells[0]
    with torch.no_grad():
        out0 = first(x)[0]  # layer 0's hidden states h_1..h_T [10, 6, 4], the input of layer 1
        out1 = lstm(x)[0]
    # weight_hh multiplies h_{t-1}: h_0 = 0, then h_1..h_{T-1}
    for layer, (inputs, outputs) in enumerate([(x, out0), (out0, out1)]):
        cell = lstm.cells[layer]
        assert torch.allclose(scores[f"cells.{layer}.weight_ih"], cell.weight_ih.abs() * _rows(inputs).norm(dim=0),
                              rtol=1e-5)
        assert torch.allclose(scores[f"cells.{layer}.weight_hh"],
                              cell.weight_hh.abs() * _rows(outputs[:, :-1]).norm(dim=0), rtol=1e-5)
        assert torch.allclose(scores[f"cells.{layer}.bias"], cell.bias.abs() * math.sqrt(60), rtol=1e-5)


def test_wanda_on_a_tiny_gpt2_reads_conv1d_weights_as_in_by_out():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    batches = [{"input_ids": torch.randint(0, 50, (4, 8))} for _ in range(2)]
    names = select_parameters(model)  # every default-selected tensor: Conv1D weights and LayerNorms
    scores = importance(model, "wanda", names, batches)
    seen = {}
    layers = {"transformer.h.0.attn.c_attn": model.transformer.h[0].attn.c_attn,
              "transformer.h.1.mlp.c_fc": model.transformer.h[1].mlp.c_fc}
    handles = [m.register_forward_pre_hook(lambda m, args, key=key: seen.setdefault(key, []).append(args[0]))
               for key, m in layers.items()]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for handle in handles:
        handle.remove()
    for key, layer in layers.items():
        x = _rows(torch.cat(seen[key]))  # [64, in]
        assert layer.weight.shape[0] == x.shape[1]  # Conv1D: [in, out]
        assert torch.allclose(scores[key + ".weight"], layer.weight.abs() * x.norm(dim=0)[:, None], rtol=1e-4)


def test_taylor_is_weight_times_the_mean_loss_gradient_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    model[2].bias.requires_grad_(False)
    batches = _batches(6, 4, count=3, classes=3)
    loss_fn = lambda outputs, targets: F.cross_entropy(outputs, targets)  # noqa: E731
    with torch.no_grad():  # the scores need gradients anyway
        scores = importance(model, "taylor", ["0.weight", "2.weight", "2.bias"], batches, loss_fn)
    reference = copy.deepcopy(model)
    reference[2].bias.requires_grad_(True)
    for x, y in batches:
        loss_fn(reference(x), y).backward()  # .grad sums the batches' gradients
    for name, p in reference.named_parameters():
        if name in scores:
            assert torch.allclose(scores[name], (p * p.grad / 3).abs(), rtol=1e-5, atol=1e-8), name
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def test_random_scores_are_reproducible_and_give_exact_sizes_per_tensor():
    model = nn.Sequential(nn.Linear(7, 5), nn.Linear(5, 3))
    names = ["0.weight", "1.weight"]
    a, b = importance(model, "random", names, seed=3), importance(model, "random", names, seed=3)
    assert all(torch.equal(a[n], b[n]) for n in names)
    assert not torch.equal(a["0.weight"], importance(model, "random", names, seed=4)["0.weight"])
    assert all(0 <= a[n].min() and a[n].max() < 1 for n in names)
    per_tensor = top_masks(a, 0.4, per_tensor=True)  # (no n * d ends in .5: top_masks rounds halves up)
    assert per_tensor.counts() == {"0.weight": round(0.4 * 35), "1.weight": round(0.4 * 15)}
    assert top_masks(a, 0.4).count() == round(0.4 * 50)


def test_every_bad_input_is_refused_with_its_fix():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    ids = [(torch.randint(0, 10, (6,)), torch.randint(0, 3, (6,)))]
    pair = nn.Bilinear(4, 4, 3)
    with pytest.raises(ValueError, match="unknown baseline 'snip'.*magnitude.*wanda.*taylor.*random"):
        importance(model, "snip", ["1.weight"])
    with pytest.raises(ValueError, match=r"unknown parameter name\(s\) \['2.weight'\]"):
        importance(model, "magnitude", ["2.weight"])
    with pytest.raises(ValueError, match=r"importance\('wanda'\): modmask cannot tell what 1 parameter\(s\) multiply: "
                                         r"weight \(Bilinear\).*nn.Linear.*"
                                         r"Use 'magnitude' or 'taylor' for those, or leave them out of `names`"):
        importance(pair, "wanda", ["weight"], [((torch.randn(8, 4), torch.randn(8, 4)), None)])
    with pytest.raises(ValueError, match="importance\\('wanda'\\) needs `batches`"):
        importance(model, "wanda", ["1.weight"])
    with pytest.raises(ValueError, match="importance\\('taylor'\\) needs `loss_fn"):
        importance(model, "taylor", ["1.weight"], ids)
    for batches in (ids[:1], iter(ids[:1])):  # counted before the work for a list, after it otherwise
        with pytest.raises(ValueError, match=r"saw 6 example\(s\).*min_examples=8.*pass more batches"):
            importance(model, "wanda", ["1.weight"], batches)
    with pytest.raises(ValueError, match="got no batch"):
        importance(model, "taylor", ["1.weight"], iter([]), lambda o, t: o.sum())
    attention = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)  # out_proj's weights are read directly
    with pytest.raises(ValueError, match=r"self_attn.in_proj_weight \(MultiheadAttention\)"):
        importance(attention, "wanda", select_parameters(attention), [(torch.randn(8, 3, 8), None)])
    with pytest.raises(ValueError, match=r"could not read the inputs of self_attn.out_proj.weight "
                                         r"\(NonDynamicallyQuantizableLinear: its module never ran"):
        importance(attention, "wanda", ["self_attn.out_proj.weight", "linear1.weight"], [(torch.randn(8, 3, 8), None)])
    assert BASELINES == ("magnitude", "wanda", "taylor", "random")
