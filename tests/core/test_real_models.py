"""Models the project did not write: PyTorch's attention layers and tiny random-config Hugging Face
transformers (no download). Each is masked unmodified, on the vmap path wherever vmap runs it."""

import copy
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import Masks, TrainedMask, collect, masked_call, select_parameters, train_mask

from test_training import make_trainer

B, T, D = 8, 6, 16


class Encoder(nn.Module):
    """nn.TransformerEncoder with a classifier head; `padding` [B, T] bool, True = padded."""

    def __init__(self, dropout=0.0):
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, 2, 32, dropout=dropout, batch_first=True)
        self.body, self.out = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True), nn.Linear(D, 3)

    def forward(self, x, padding=None):
        return self.out(self.body(x, src_key_padding_mask=padding)[:, 0])


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.out = nn.MultiheadAttention(D, 2, batch_first=True), nn.Linear(D, 3)

    def forward(self, x):
        return self.out(self.attn(x, x, x, need_weights=False)[0].mean(1))


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Transformer(D, 2, 1, 1, 32, dropout=0.0, batch_first=True)
        self.out = nn.Linear(D, 3)

    def forward(self, src, tgt):
        return self.out(self.body(src, tgt)[:, -1])


def _padding(batch=B, length=T):
    """[B, T] long attention mask (1 = token), every other sequence padded after 4 tokens."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[::2, 4:] = 0
    return mask


def _torch_model(name):
    """(model, inputs, targets, loss_fn, output_fn) for a model built from PyTorch's layers."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, T, D, generator=g), torch.randint(0, 3, (B,), generator=g)
    if name == "torch-encoder":
        return Encoder(), x, y
    if name == "torch-encoder-padded":
        return Encoder(), {"x": x, "padding": _padding() == 0}, y
    if name == "torch-mha":
        return SelfAttention(), x, y
    return Seq2Seq(), (x, torch.randn(B, 3, D, generator=g)), y


def _hf_model(name):
    """(model, inputs, targets) for a tiny random-config Hugging Face model."""
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (B, T), generator=g)
    common = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    labels = torch.randint(0, 3, (B,), generator=g)
    if name.startswith("hf-bert"):
        config = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, num_labels=3, **common)
        inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
        if name == "hf-bert-padded":
            inputs["attention_mask"] = _padding()
        if name == "hf-bert-padded-4d":  # the recipe of docs/real_models.md: [B, 1, 1, T] bool, True = attend
            inputs["attention_mask"] = _padding().bool()[:, None, None, :]
        return transformers.BertForSequenceClassification(config), inputs, labels
    if name == "hf-gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config), {"input_ids": ids}, ids
    if name == "hf-llama":
        config = transformers.LlamaConfig(vocab_size=100, max_position_embeddings=32, num_key_value_heads=1,
                                          **common)
        return transformers.LlamaForCausalLM(config), {"input_ids": ids}, ids
    if name == "hf-vit":
        config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, num_labels=3, **common)
        pixels = torch.randn(B, 3, 8, 8, generator=g)
        return transformers.ViTForImageClassification(config), {"pixel_values": pixels}, labels
    assert name == "hf-t5"
    config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    return transformers.T5ForConditionalGeneration(config), {"input_ids": ids, "decoder_input_ids": ids[:, :4]}, ids[:, :4]


TORCH = ["torch-encoder", "torch-encoder-padded", "torch-mha", "torch-transformer"]
HF = ["hf-bert", "hf-bert-padded", "hf-bert-padded-4d", "hf-gpt2", "hf-llama", "hf-vit", "hf-t5"]
SEQUENTIAL = {"hf-bert-padded"}  # HF's mask preparation branches on the 2D mask's values


def _recipe(inputs):
    """A Hugging Face batch with its 2D attention mask as the 4D mask of docs/real_models.md
    ([B, 1, 1, T] bool, True = attend): the same function, which vmap can run."""
    return {**inputs, "attention_mask": inputs["attention_mask"].bool()[:, None, None, :]}


def _model(name):
    torch.manual_seed(0)
    model, inputs, targets = _torch_model(name) if name.startswith("torch") else _hf_model(name)
    return model.eval(), inputs, targets


def _output(outputs):
    """The tensor a loss reads: the logits of a ModelOutput, the output tensor otherwise."""
    return outputs.logits if hasattr(outputs, "logits") else outputs


def _loss(outputs, targets):
    logits = _output(outputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _call(model, inputs):
    if isinstance(inputs, dict):
        return _output(model(**inputs))
    return _output(model(*inputs) if isinstance(inputs, tuple) else model(inputs))


@pytest.mark.parametrize("name", TORCH + HF)
def test_all_ones_mask_gives_the_models_outputs(name):
    model, inputs, targets = _model(name)
    ones = Masks({n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in select_parameters(model)})
    with torch.no_grad():
        expected = _call(model, inputs)
    got = collect(model, ones, [(inputs, targets)], lambda out, _: _output(out))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_evaluation_takes_a_dict_batch_alone_and_builds_no_cache():
    model, inputs, ids = _model("hf-gpt2")
    batch = {**inputs, "labels": ids}
    seen = []
    losses = collect(model, None, [batch], lambda out, targets: seen.append((out, targets)) or out.loss[None])
    (out, targets), = seen
    assert targets is None and "cache" not in out  # use_cache=False: no key/value cache in the output
    with torch.no_grad():
        assert torch.allclose(losses, model(**batch).loss[None])


@pytest.mark.parametrize("name", TORCH + HF)
def test_masking_one_weight_equals_zeroing_it_by_hand(name):
    model, inputs, targets = _model(name)
    chosen = [n for n in select_parameters(model) if model.get_parameter(n).dim() == 2][-1]  # near the output
    mask = torch.ones_like(model.get_parameter(chosen), dtype=torch.bool)
    mask[1, 2] = False
    got = collect(model, Masks({chosen: mask}), [(inputs, targets)], lambda out, _: _output(out))
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.get_parameter(chosen)[1, 2] = 0.0
        expected = _call(zeroed, inputs)
        assert not torch.equal(expected, _call(model, inputs)), "the weight should matter"
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def _step_results(model, inputs, targets, path, loss_fn=_loss):
    batch = (inputs, targets) if targets is not None else inputs
    trainer = make_trainer(model, loss_fn, batch, k=4, seed=5, path=path, grad_clip=None)
    losses = trainer.step([batch])[0]
    return trainer.path, losses["loss"], {n: l.grad.clone() for n, l in trainer.logits.items()}


def _assert_paths_agree(model, inputs, targets, expected_path, loss_fn=_loss, vmap_inputs=None):
    """The first step on the path 'auto' chooses (expected_path) equals the step on the other path
    (same noise). Where 'auto' chooses the sequential path, vmap runs `vmap_inputs` instead: other
    inputs for the same function (the 4D mask recipe)."""
    path, loss_a, grads_a = _step_results(model, inputs, targets, "auto", loss_fn)
    assert path == expected_path
    other = "sequential" if path == "vmap" else "vmap"
    other_inputs = inputs if path == "vmap" else vmap_inputs
    assert other_inputs is not None, "the sequential path needs vmap inputs to be compared with"
    chosen, loss_b, grads_b = _step_results(model, other_inputs, targets, other, loss_fn)
    assert chosen == other
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert list(grads_a) == list(grads_b)
    for n in grads_b:
        assert torch.allclose(grads_a[n], grads_b[n], rtol=1e-4, atol=1e-6), n
    assert any(g.abs().sum() > 0 for g in grads_b.values())


@pytest.mark.parametrize("name", TORCH + HF)
def test_vmap_and_sequential_paths_agree_on_loss_and_gradients(name):
    model, inputs, targets = _model(name)
    if name in SEQUENTIAL:  # vmap cannot run the 2D mask: the sequential path against vmap on the 4D recipe
        _assert_paths_agree(model, inputs, targets, "sequential", vmap_inputs=_recipe(inputs))
    else:
        _assert_paths_agree(model, inputs, targets, "vmap")


@pytest.mark.parametrize("name", TORCH)
def test_pytorch_attention_layers_run_on_the_vmap_path_in_train_mode_too(name):
    model, inputs, targets = _model(name)
    _assert_paths_agree(model.train(), inputs, targets, "vmap")  # dropout 0: the paths must agree


def test_dropout_in_train_mode_keeps_the_vmap_path():
    model, inputs, targets = _model("torch-encoder")
    trainer = make_trainer(Encoder(dropout=0.1).train(), _loss, (inputs, targets), k=4)
    trainer.step([(inputs, targets)])
    assert trainer.path == "vmap"


def test_a_loss_the_model_computes_itself_comes_back_per_sample():
    model, inputs, ids = _model("hf-gpt2")
    batch = {**inputs, "labels": ids}  # a dict alone: the model computes outputs.loss, one per sample
    _assert_paths_agree(model, batch, None, "vmap", loss_fn=lambda out, _: out.loss.mean())


@pytest.mark.parametrize("name", TORCH + HF)
@pytest.mark.parametrize("fastpath", [True, False])
def test_training_leaves_the_model_and_the_fast_path_setting_untouched(name, fastpath):
    model, inputs, targets = _model(name)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        trained = train_mask(model, [(inputs, targets)], _loss, steps=3, k=4, beta=1e-3, progress=False)
        assert torch.backends.mha.get_fastpath_enabled() is fastpath
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert len(trained.history) > 0 and all(torch.isfinite(l).all() for l in trained.logits.values())
    assert any((l != 2.0).any() for l in trained.logits.values())  # the logits did train
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[n], t) for n, t in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_a_mask_file_for_one_model_is_refused_by_another(tmp_path):
    gpt2, inputs, ids = _model("hf-gpt2")
    path = tmp_path / "gpt2.safetensors"
    train_mask(gpt2, [(inputs, ids)], _loss, steps=1, k=4, progress=False).save(path)
    assert set(TrainedMask.load(path, gpt2).logits) == set(select_parameters(gpt2))
    for other in ("hf-llama", "torch-encoder"):
        with pytest.raises(ValueError, match="made for another model"):
            TrainedMask.load(path, _model(other)[0])


def test_default_rule_for_hf_models_leaves_embeddings_out_and_keeps_norms_and_conv1d():
    gpt2 = set(select_parameters(_model("hf-gpt2")[0]))
    assert not {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"} & gpt2  # lm_head is tied
    assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.ln_1.weight"} <= gpt2
    llama = _model("hf-llama")[0]
    chosen = set(select_parameters(llama))
    assert "model.embed_tokens.weight" not in chosen
    assert {"model.layers.0.input_layernorm.weight", "model.norm.weight", "lm_head.weight"} <= chosen
    assert "model.norm.weight" not in select_parameters(llama, norms=False)
    vit = set(select_parameters(_model("hf-vit")[0]))
    assert not {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"} & vit
    assert "vit.embeddings.patch_embeddings.projection.weight" in vit  # a conv on pixels, not a lookup table
    t5 = set(select_parameters(_model("hf-t5")[0]))
    assert not {n for n in t5 if "relative_attention_bias" in n or n.startswith("shared")}


def test_conv1d_weights_are_used_in_their_own_layout():
    model, inputs, ids = _model("hf-gpt2")
    trainer = make_trainer(model, _loss, k=4)
    assert "transformer.h.0.attn.c_attn.weight" not in trainer.transposed
    assert trainer.result().logits["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)


def test_recipe_masking_the_mlp_weights_of_some_layers_only():
    model, inputs, ids = _model("hf-gpt2")
    glob = select_parameters(model, "transformer.h.[1-1].mlp.*.weight")
    layers = range(1, 2)  # docs/real_models.md: layers 4-8 of a larger model are range(4, 9)
    predicate = select_parameters(model, lambda name, p: name.endswith(".weight") and ".mlp." in name
                                  and int(name.split(".")[2]) in layers)
    assert glob == predicate == ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"]
    trained = train_mask(model, [(inputs, ids)], _loss, steps=2, k=4, parameters=predicate, progress=False)
    assert list(trained.logits) == predicate


class DictOutput(OrderedDict):
    """A dict subclass that torch's pytree does not know, like an unregistered ModelOutput."""


class CachingModel(nn.Module):
    def __init__(self, with_logits=True):
        super().__init__()
        self.layer, self.with_logits = nn.Linear(4, 3), with_logits

    def forward(self, x, use_cache=True):
        out = DictOutput(cache=object() if use_cache else None, steps=3)
        if self.with_logits:
            out["logits"] = self.layer(x)
        return out


def test_outputs_are_rebuilt_with_tensors_and_constants_and_no_cache():
    seen = []

    def loss(out, y):
        seen.append(out)
        return F.cross_entropy(out["logits"], y)

    batch = ({"x": torch.randn(4, 4)}, torch.randint(0, 3, (4,)))
    trainer = make_trainer(CachingModel(), loss, batch, k=2)
    trainer.step([batch])
    assert trainer.path == "vmap"
    assert type(seen[0]) is DictOutput and seen[0]["cache"] is None and seen[0]["steps"] == 3
    assert seen[0]["logits"].shape == (4, 3)


def test_dict_tensors_with_different_batch_sizes_are_refused_by_name():
    model, inputs, targets = _model("torch-encoder-padded")
    bad = {**inputs, "padding": inputs["padding"][:6]}
    with pytest.raises(ValueError, match=r"x: 8, padding: 6"):
        make_trainer(model, _loss, (bad, targets), k=4)


def test_an_output_without_a_tensor_is_refused_with_its_structure():
    trainer = make_trainer(CachingModel(with_logits=False), F.cross_entropy, k=2, parameters="layer.weight")
    with pytest.raises(ValueError, match=r"holds no tensor.*DictOutput\(cache: NoneType, steps: int\)"):
        trainer.prepare([({"x": torch.randn(4, 4)}, torch.randint(0, 3, (4,)))])


def test_a_loss_that_reads_a_missing_entry_names_what_the_model_returned():
    model, inputs, targets = _model("hf-vit")
    # found while preparing (the loss of the full model, the stage's reference), before any step
    with pytest.raises(ValueError, match=r"loss_fn failed on the model's outputs ImageClassifierOutput\(logits"):
        make_trainer(model, lambda out, y: F.cross_entropy(out.hidden_states, y), (inputs, targets), k=4)


def test_a_model_vmap_cannot_batch_gets_a_one_line_reason(caplog):
    model, inputs, targets = _model("hf-bert-padded")
    with pytest.raises(ValueError, match=r"branches on the values of a tensor.*4D mask.*path='sequential'"):
        make_trainer(model, _loss, (inputs, targets), k=4, path="vmap")
    with caplog.at_level(logging.WARNING):
        make_trainer(model, _loss, (inputs, targets), k=4).step([(inputs, targets)])
    assert "attention_mask" in caplog.text and "sequential path" in caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def _bridge(source):
    """(bridge, plain) for TransformerLens 4's TransformerBridge, built without a download: over its
    native model, or wrapped around a tiny random-config Hugging Face GPT-2 (`plain`: an unwrapped copy
    of that model; the bridge replaces the submodules of the model it wraps)."""
    sources = pytest.importorskip("transformer_lens.model_bridge.sources")
    if source == "native":
        return sources.boot_native(dict(n_layers=2, d_model=16, n_ctx=8, d_head=8, n_heads=2, d_mlp=32,
                                        d_vocab=50, act_fn="gelu", seed=0)).eval(), None
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    plain = copy.deepcopy(model)
    return sources.build_bridge_from_module(model, "GPT2LMHeadModel", hf_config=config).eval(), plain


@pytest.mark.parametrize("source", ["native", "hf-gpt2"])
def test_transformer_lens_bridge_trains_on_the_vmap_path_and_stays_untouched(source):
    # TransformerLens 4 removed HookedTransformer; its TransformerBridge reaches each component under
    # two names, which torch's tie handling would not restore.
    bridge, plain = _bridge(source)
    held = {n: p for n, p in bridge.named_parameters()}
    before = {n: p.detach().clone() for n, p in held.items()}
    ids = torch.randint(0, 50, (B, 5))
    chosen = select_parameters(bridge)
    assert not [n for n in chosen if "embed" in n or n.startswith("pos.") or ".wte." in n or ".wpe." in n]
    ones = Masks({n: torch.ones_like(held[n], dtype=torch.bool) for n in chosen})
    with torch.no_grad():
        assert torch.allclose(collect(bridge, ones, [(ids, ids)], lambda out, _: out), bridge(ids), atol=1e-6)
    if plain is not None:  # masked_call through the bridge = the plain HF model with that weight zeroed
        name = next(n for n in chosen if ".mlp." in n and "c_fc" in n and n.endswith("weight"))
        mask = torch.ones_like(held[name], dtype=torch.bool)
        mask[3, 5] = False
        with torch.no_grad():
            plain.transformer.h[0].mlp.c_fc.weight[3, 5] = 0.0
            expected = plain(input_ids=ids).logits
            assert not torch.allclose(expected, bridge(ids), atol=1e-5), "the weight should matter"
            assert torch.allclose(masked_call(bridge, Masks({name: mask}), ids), expected, atol=1e-5)
    _assert_paths_agree(bridge, ids, ids, "vmap")
    train_mask(bridge, [(ids, ids)], _loss, steps=2, k=4, progress=False)
    assert all(p is held[n] and torch.equal(p, before[n]) and p.grad is None for n, p in bridge.named_parameters())


def test_the_4d_mask_recipe_gives_the_2d_masks_outputs():
    model, inputs, _ = _model("hf-bert-padded")
    with torch.no_grad():
        assert torch.allclose(model(**_recipe(inputs)).logits, model(**inputs).logits, atol=1e-6)


class TiedModule(nn.Module):
    """One embedding module reachable under two names, used for the input and the output."""

    def __init__(self):
        super().__init__()
        self.inputs = nn.Embedding(10, D)
        self.outputs = self.inputs
        self.layer = nn.Linear(D, D)

    def forward(self, ids):
        return self.layer(self.inputs(ids)) @ self.outputs.weight.t()


@pytest.mark.parametrize("name", ["tied-module", "hf-gpt2"])
def test_a_tied_weight_is_masked_everywhere_it_is_used_and_restored(name):
    if name == "tied-module":
        model, inputs, embedding, head = TiedModule().eval(), torch.randint(0, 10, (B, T)), "inputs.weight", "outputs"
    else:  # lm_head.weight is the same tensor as the input embedding
        (model, inputs, _), embedding, head = _model(name), "transformer.wte.weight", "lm_head"
    ids = inputs if isinstance(inputs, torch.Tensor) else inputs["input_ids"]
    token = int(ids[0, 0])  # in the input: its row is read by the input embedding and by the output layer
    held = {n: p for n, p in model.named_parameters()}
    mask = torch.ones_like(held[embedding], dtype=torch.bool)
    mask[token] = False
    got = collect(model, Masks({embedding: mask}), [(inputs, None)], lambda out, _: _output(out))
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.get_parameter(embedding)[token] = 0.0
        assert torch.allclose(got, _call(zeroed, inputs), atol=1e-6)
        # masked in one of the two places only, the outputs differ: the test sees both uses
        for side in ("input", "output"):
            one_side = copy.deepcopy(model)
            setattr(one_side, head, copy.deepcopy(getattr(one_side, head)))  # untied: its own copy of the weight
            (one_side.get_parameter(embedding) if side == "input" else getattr(one_side, head).weight)[token] = 0.0
            assert not torch.allclose(got, _call(one_side, inputs), atol=1e-3), side
    assert all(p is held[n] and isinstance(p, nn.Parameter) for n, p in model.named_parameters())


def test_a_model_left_holding_swapped_in_tensors_is_put_back_and_refused(monkeypatch):
    from modmask.core import masking

    def leaky_call(model, tensors, args, kwargs, tie_weights):  # what functional_call did to a TransformerBridge
        model.layer._parameters["weight"] = tensors["layer.weight"]
        return model(*args, **kwargs)

    model = CachingModel()
    weight = model.layer.weight
    monkeypatch.setattr(masking, "functional_call", leaky_call)
    with pytest.raises(ValueError, match=r"did not restore 1 parameter\(s\) of CachingModel \(modmask put them back\)"):
        masked_call(model, {"layer.weight": torch.zeros(3, 4, dtype=torch.bool)}, torch.randn(2, 4))
    assert model.layer.weight is weight and isinstance(weight, nn.Parameter) and weight.abs().sum() > 0
