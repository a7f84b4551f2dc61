"""Heads and neurons as parameter slices (core/structure.py), on tiny random models of every family
(no download): zeroing a unit's slices equals zeroing its input features of `UnitSet.module`."""

import pytest
import torch
from torch import nn

from modmask import Masks, masked_call
from modmask.core.masking import fused_attention_disabled
from modmask.core.structure import Slice, UnitSet, attention_heads, mlp_neurons
from modmask.models.transformer import TransformerEncoderDecoder

transformers = pytest.importorskip("transformers")

B, T, V = 3, 5, 50


class TorchEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.body(x)


def _family(name):
    """(model, args, kwargs) of a tiny random model; the output is the logits or the tensor."""
    torch.manual_seed(0)
    ids = torch.randint(0, V, (B, T))
    small = dict(vocab_size=V, max_position_embeddings=16, hidden_size=32, num_attention_heads=4,
                 intermediate_size=48, num_hidden_layers=2)
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4)
        return transformers.GPT2LMHeadModel(config).eval(), (), {"input_ids": ids}
    if name in ("llama", "llama-gqa"):
        config = transformers.LlamaConfig(num_key_value_heads=2 if name == "llama-gqa" else 4, **small)
        return transformers.LlamaForCausalLM(config).eval(), (), {"input_ids": ids}
    if name == "bert":
        config = transformers.BertConfig(**small)
        return transformers.BertModel(config).eval(), (), {"input_ids": ids}
    if name == "modmask":
        model = TransformerEncoderDecoder(V, V, d_model=32, heads=4, ff_size=48, layers=1, dropout=0.0).eval()
        return model, (ids, torch.full((B,), T), 4, torch.randint(0, V, (B, 4))), {}
    assert name == "torch"
    return TorchEncoder().eval(), (torch.randn(B, T, 32),), {}


FAMILIES = ["gpt2", "llama", "llama-gqa", "bert", "modmask", "torch"]


def _output(out):
    out = out.logits if hasattr(out, "logits") else out
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def _zeroed(model, unit_set, unit, keep=lambda s: True):
    """Masks that zero `unit`'s slices (those `keep` accepts)."""
    params, masks = dict(model.named_parameters()), {}
    for s in unit_set.slices:
        if keep(s):
            mask = masks.setdefault(s.name, torch.ones_like(params[s.name], dtype=torch.bool))
            mask.narrow(s.dim, s.start + unit * s.size, s.size).fill_(False)
    return Masks(masks)


def _masked(model, masks, args, kwargs):
    with torch.no_grad(), fused_attention_disabled():
        return _output(masked_call(model, masks, *args, **kwargs))


def _features_zeroed(model, unit_set, unit, args, kwargs):
    """The output with `unit`'s input features of unit_set.module zeroed by a forward pre-hook."""
    def hook(_, inputs):
        x = inputs[0].clone()
        x[..., unit * unit_set.size:(unit + 1) * unit_set.size] = 0
        return (x, *inputs[1:])

    if unit_set.module.endswith("self_attn.out_proj"):  # never called (F.multi_head_attention_forward reads
        columns = unit_set.slices[-1]                    # its weight): the same zeros, by its input columns
        assert columns.name == unit_set.module + ".weight" and columns.dim == 1
        return _masked(model, _zeroed(model, unit_set, unit, lambda s: s == columns), args, kwargs)
    handle = model.get_submodule(unit_set.module).register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), fused_attention_disabled():
            return _output(model(*args, **kwargs))
    finally:
        handle.remove()


def test_gpt2_heads_and_neurons_are_its_packed_columns_and_rows():
    model, _, _ = _family("gpt2")
    heads, neurons = attention_heads(model), mlp_neurons(model)
    assert [(u.kind, u.layer, u.count, u.size) for u in heads] == [("head", 0, 4, 8), ("head", 1, 4, 8)]
    h = "transformer.h.1.attn."
    assert heads[1].module == h + "c_proj" and heads[1].name == h + "c_proj:heads"
    assert heads[1].slices == (Slice(h + "c_attn.weight", 1, 0, 8), Slice(h + "c_attn.bias", 0, 0, 8),
                               Slice(h + "c_attn.weight", 1, 32, 8), Slice(h + "c_attn.bias", 0, 32, 8),
                               Slice(h + "c_attn.weight", 1, 64, 8), Slice(h + "c_attn.bias", 0, 64, 8),
                               Slice(h + "c_proj.weight", 0, 0, 8))
    m = "transformer.h.0.mlp."
    assert neurons[0] == UnitSet("neuron", 0, m + "c_proj", 128, 1, (
        Slice(m + "c_fc.weight", 1, 0, 1), Slice(m + "c_fc.bias", 0, 0, 1), Slice(m + "c_proj.weight", 0, 0, 1)))


def test_the_other_families_units():
    llama, _, _ = _family("llama-gqa")
    a = "model.layers.0.self_attn."
    assert attention_heads(llama)[0] == UnitSet("head", 0, a + "o_proj", 4, 8, (
        Slice(a + "q_proj.weight", 0, 0, 8), Slice(a + "o_proj.weight", 1, 0, 8)))  # k, v: shared by 2 heads
    full, _, _ = _family("llama")
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert [s.name for s in attention_heads(full)[0].slices] == [a + p + ".weight" for p in projections]
    assert [s.name for s in mlp_neurons(llama)[1].slices] == [
        f"model.layers.1.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    bert, _, _ = _family("bert")
    assert [u.module for u in attention_heads(bert)] == [f"encoder.layer.{i}.attention.output.dense" for i in (0, 1)]
    assert [u.module for u in mlp_neurons(bert)] == [f"encoder.layer.{i}.output.dense" for i in (0, 1)]
    assert len(attention_heads(bert)[0].slices) == 7 and mlp_neurons(bert)[0].count == 48
    ours, _, _ = _family("modmask")  # layer: the order of attention modules, 3 with 1 encoder and 1 decoder layer
    assert [(u.layer, u.module) for u in attention_heads(ours)] == [
        (0, "encoder.0.attention.merge"), (1, "decoder.0.self_attention.merge"), (2, "decoder.0.cross_attention.merge")]
    assert [u.module for u in mlp_neurons(ours)] == ["encoder.0.ff2", "decoder.0.ff2"]
    torch_model, _, _ = _family("torch")
    layer = "body.layers.0."
    assert attention_heads(torch_model)[0].slices[:3] == tuple(
        Slice(layer + "self_attn.in_proj_weight", 0, i * 32, 8) for i in range(3))
    assert mlp_neurons(torch_model)[0].module == layer + "linear2"
    assert attention_heads(nn.Sequential(nn.Linear(3, 3))) == [] == mlp_neurons(nn.Linear(3, 3))


@pytest.mark.parametrize("name", FAMILIES)
def test_zeroing_a_units_slices_equals_zeroing_its_features(name):
    model, args, kwargs = _family(name)
    with torch.no_grad(), fused_attention_disabled():
        full = _output(model(*args, **kwargs))
    for unit_set in attention_heads(model) + mlp_neurons(model):
        unit = unit_set.count - 2
        got = _masked(model, _zeroed(model, unit_set, unit), args, kwargs)
        expected = _features_zeroed(model, unit_set, unit, args, kwargs)
        assert not torch.allclose(expected, full, atol=1e-4), unit_set.name  # the unit matters
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), unit_set.name


@pytest.mark.parametrize("name", FAMILIES)
def test_a_units_own_input_slices_alone_silence_it(name):
    # value rows (and bias) of a head, up rows of a neuron: the activation is 0 where its input is,
    # so these slices index the unit's own block (a wrong start or dim would silence another unit)
    model, args, kwargs = _family(name)
    for unit_set in attention_heads(model) + mlp_neurons(model):
        module = unit_set.module
        if unit_set.kind == "head":
            values = [s for s in unit_set.slices if s.start == 2 * unit_set.count * unit_set.size
                      or any(p in s.name for p in ("v_proj", "value", ".v_attn"))]
            if name == "llama-gqa":
                assert values == []
                continue
            assert values, module
        else:
            values = [s for s in unit_set.slices if not s.name.startswith(module + ".")]
        unit = 1
        got = _masked(model, _zeroed(model, unit_set, unit, lambda s: s in values), args, kwargs)
        assert torch.allclose(got, _features_zeroed(model, unit_set, unit, args, kwargs), rtol=1e-5, atol=1e-6), module


class Unnamed(nn.Module):
    """Projections named like Llama's, with no head count anywhere."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))


def test_a_head_count_that_cannot_be_found_is_asked_for():
    model = nn.Sequential(Unnamed())
    with pytest.raises(ValueError, match=r"'0' \(Unnamed\).*heads=N"):
        attention_heads(model)
    (heads,) = attention_heads(model, heads=2)
    assert (heads.module, heads.count, heads.size, len(heads.slices)) == ("0.o_proj", 2, 4, 7)
    with pytest.raises(ValueError, match="cannot be split into 3 heads"):
        attention_heads(model, heads=3)
