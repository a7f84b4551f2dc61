"""Masks that leave modmask (core/export.py): the pruned model loaded back without modmask computes
what masked_call computes, under zero and mean removal; MIB node circuits."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from modmask import Masks, export_pruned, masked_call, mib_circuit, node_scores, select_parameters
from modmask.core.removal import mean_inputs
from modmask.core.structure import attention_heads, mlp_neurons


def _net():
    """Every kind whose mean offset has a bias slot: Conv2d, BatchNorm, Linear, LayerNorm."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def _random_masks(model, names, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return Masks({n: torch.rand(params[n].shape, generator=generator) > 0.4 for n in names})


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_a_state_dict_export_loads_into_a_fresh_model_and_computes_the_masked_call(tmp_path, removal):
    model = _net()
    model.train()(torch.randn(16, 3, 5, 5))  # running statistics that are not the defaults
    model.eval()
    x, reference = torch.randn(6, 3, 5, 5), [(torch.randn(16, 3, 5, 5) + 0.5, None)]
    masks = _random_masks(model, [n for n, _ in model.named_parameters()])  # biases too: mean puts them back
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    path = export_pruned(model, masks, tmp_path / "pruned.safetensors", removal=removal, reference=reference)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # the model is unchanged
    fresh = _net().eval()
    fresh.load_state_dict(load_file(path))
    with torch.no_grad():
        expected = masked_call(model, masks, x, removal=removal, reference=reference)
        assert not torch.allclose(expected, model(x), atol=1e-3)
        assert torch.allclose(fresh(x), expected, rtol=1e-5, atol=1e-5)
    if removal == "mean":  # the offsets are what makes the difference
        zero = masked_call(model, masks, x)
        assert not torch.allclose(fresh(x), zero, atol=1e-3)


def test_a_layer_without_a_bias_slot_is_refused_under_mean_removal_and_named(tmp_path):
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4, bias=False), nn.RMSNorm(4))
    reference = [(torch.randn(16, 5), None)]
    masks = _random_masks(model, ["0.weight", "2.weight", "3.weight"])
    with pytest.raises(ValueError, match=r"\['2.weight', '3.weight'\]: their layers \['2', '3'\] have no bias.*"
                                         r"removal='2.weight=zero,mean'"):
        export_pruned(model, masks, tmp_path / "m.safetensors", removal="mean", reference=reference)
    assert not list(tmp_path.iterdir())
    # zero removal there; a layer whose weights are all kept needs no offset
    kept = Masks({**masks, "3.weight": torch.ones(4, dtype=torch.bool)})
    removal = "2.weight=zero,mean"
    path = export_pruned(model, kept, tmp_path / "m.safetensors", removal=removal, reference=reference)
    fresh = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4, bias=False), nn.RMSNorm(4))
    fresh.load_state_dict(load_file(path))
    x = torch.randn(3, 5)
    with torch.no_grad():
        assert torch.allclose(fresh(x), masked_call(model, kept, x, removal=removal, reference=reference), atol=1e-6)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    return transformers, transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_a_hugging_face_export_loads_with_from_pretrained(tmp_path, removal):
    transformers, model = _gpt2()
    ids = torch.randint(0, 50, (4, 6))
    reference = mean_inputs(model, [({"input_ids": torch.randint(0, 50, (8, 6))}, None)],
                            [n for n in select_parameters(model)])
    masks = _random_masks(model, select_parameters(model))  # Conv1D weights and LayerNorm gains
    export_pruned(model, masks, tmp_path / "gpt2", removal=removal, reference=reference)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    with torch.no_grad():
        expected = masked_call(model, masks, input_ids=ids, removal=removal, reference=reference).logits
        assert torch.allclose(loaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(input_ids=ids).logits, expected, atol=1e-3)


def test_node_scores_are_mean_logits_of_each_heads_and_mlps_slices():
    _, model = _gpt2()
    generator = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    logits = {n: torch.randn(params[n].shape, generator=generator) for n in select_parameters(model)}
    scores = node_scores(model, logits)
    assert list(scores) == [f"a{L}.h{h}" for L in (0, 1) for h in range(4)] + ["m0", "m1"]
    a, m = "transformer.h.1.attn.", "transformer.h.1.mlp."
    head = 2 * 8  # head 2 of layer 1: its q, k, v columns of c_attn (no bias logits) and rows of c_proj
    own = [logits[a + "c_attn.weight"][:, block + head:block + head + 8] for block in (0, 32, 64)]
    own.append(logits[a + "c_proj.weight"][head:head + 8])
    assert scores["a1.h2"] == pytest.approx(float(torch.cat([t.reshape(-1) for t in own]).mean()), rel=1e-5)
    mlp = torch.cat([logits[m + "c_fc.weight"].reshape(-1), logits[m + "c_proj.weight"].reshape(-1)])
    assert scores["m1"] == pytest.approx(float(mlp.mean()), rel=1e-5)
    # a unit-level logit is used as it is; a node without any logit is NaN
    heads = attention_heads(model)[0]
    unit = node_scores(model, {heads.name: torch.tensor([1.0, -2.0, 3.0, 0.5])})
    assert [unit[f"a0.h{h}"] for h in range(4)] == [1.0, -2.0, 3.0, 0.5]
    assert math.isnan(unit["a1.h0"]) and math.isnan(unit["m0"])
    with pytest.raises(ValueError, match=r"one entry per unit: \(4,\)"):
        node_scores(model, {heads.name: torch.zeros(5)})
    neurons = mlp_neurons(model)[1]
    assert node_scores(model, {neurons.name: torch.arange(128.0)})["m1"] == pytest.approx(63.5)


def test_the_mib_circuit_file_round_trips_with_its_nodes(tmp_path):
    _, model = _gpt2()
    params = dict(model.named_parameters())
    logits = {n: torch.full(params[n].shape, 2.0) for n in select_parameters(model)}
    logits["transformer.h.0.attn.c_proj.weight"][8:16] = -20.0  # head 1 of layer 0 out
    del logits["transformer.h.1.mlp.c_fc.weight"], logits["transformer.h.1.mlp.c_proj.weight"]  # m1 unscored
    circuit = mib_circuit(model, logits, tmp_path / "circuit.json")
    assert json.loads((tmp_path / "circuit.json").read_text()) == circuit
    assert circuit["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
    nodes = circuit["nodes"]
    assert list(nodes) == (["input"] + [f"a0.h{h}" for h in range(4)] + ["m0"] + [f"a1.h{h}" for h in range(4)]
                           + ["m1", "logits"])
    assert nodes["input"] == nodes["logits"] == nodes["m1"] == {"in_graph": True}  # unscored: kept
    assert nodes["a0.h1"]["in_graph"] is False and nodes["a0.h1"]["score"] < 0
    assert all(nodes[n] == {"in_graph": True, "score": 2.0} for n in ("a0.h0", "a1.h3", "m0"))
    assert circuit["edges"] == {}
