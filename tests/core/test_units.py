"""Unit masks (core/units.py): rows and columns (one logit per output or input unit, broadcast to its
weights), read back as weights, saved with the mask, and refused where they do not fit."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import MaskConfig, TrainedMask, evaluate, train_mask
from modmask.core.training import MaskTrainer
from modmask.core.units import plan_units


def _toy(seed=0, examples=512):
    """The label is whether inputs 0..3 sum above 0; inputs 4..11 are noise. A network trained on it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(examples, 12, generator=generator)
    y = (x[:, :4].sum(-1) > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def test_column_masks_find_the_inputs_the_function_reads():
    model, x, y = _toy()
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    trained = train_mask(model, batches, F.cross_entropy, steps=600, lr=0.05, beta=5e-3, granularity="0.weight=column,weight",
                         progress=False)
    columns = trained.unit_masks["0.weight"]
    assert columns.shape == (12,)
    assert columns[:4].all()  # the four inputs the label is made of
    assert columns[4:].float().mean() < 0.5  # most noise inputs removed
    weights = trained.masks["0.weight"]  # read as weights: whole columns
    assert torch.equal(weights, columns.expand(32, 12))
    correct = lambda out, t: (out.argmax(-1) == t).float()  # noqa: E731
    assert evaluate(model, trained.masks, batches, correct) > 0.9
    assert trained.masks["2.weight"].shape == (2, 32)  # weight granularity elsewhere


def test_row_masks_train_on_both_paths_alike_and_round_trip(tmp_path):
    model, x, y = _toy(1)
    config = MaskConfig(steps=20, granularity="row", k=4)
    runs = [train_mask(model, [(x[:128], y[:128])], F.cross_entropy, config, path=path, progress=False)
            for path in ("vmap", "sequential")]
    for name in runs[0].logits:
        assert torch.allclose(runs[0].logits[name], runs[1].logits[name], atol=1e-5)
    assert runs[0].logits["0.weight"].shape == (32,) and runs[0].logits["2.weight"].shape == (2,)
    path = tmp_path / "rows.safetensors"
    runs[0].save(path)
    loaded = TrainedMask.load(path, model)
    assert [u.name for u in loaded.units] == ["0.weight", "2.weight"]
    assert all(torch.equal(loaded.masks[n], runs[0].masks[n]) for n in runs[0].masks)


def test_a_unit_weighs_the_weights_it_covers():
    """The regulariser's force on a unit's logit is its weight count's: with no task gradient (a
    constant loss), one step moves a row logit of 12 weights as 12 weight logits would move one."""
    model, x, y = _toy(2)
    zero_loss = lambda out, t: out.sum() * 0.0  # noqa: E731
    trainer = MaskTrainer(model, zero_loss, MaskConfig(granularity="0.weight=row,weight", beta=1.0,
                                                        grad_clip=None), seed=0).prepare([(x[:64], y[:64])])
    trainer.step([(x[:64], y[:64])])
    row, weight = trainer.logits["0.weight"].grad[0], trainer.logits["2.weight"].grad[0]
    assert torch.allclose(row, torch.full_like(row, 12.0) * weight.flatten()[0])
    assert trainer.density() == pytest.approx(1.0)


def test_granularities_that_do_not_fit_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"granularity 'unit'.*not one of weight, row, column, head, neuron"):
        MaskConfig(granularity="unit")
    with pytest.raises(ValueError, match=r"row masks need a matrix.*granularity 'weight'"):
        plan_units(model, ["0.weight", "1.weight"], "row")


def _row_mask(model, seed=0):
    """A TrainedMask with row masks on the first layer (32 rows of 12 weights) and weights elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    names, units = plan_units(model, ["0.weight", "2.weight"], "0.weight=row,weight")
    logits = {"0.weight": torch.randn(32, generator=generator), "2.weight": torch.randn(2, 32, generator=generator)}
    return TrainedMask(logits, units=units)


def test_a_unit_mask_reads_as_a_ranking_of_whole_units():
    model, _, _ = _toy(3)
    trained = _row_mask(model)
    trained.logits["2.weight"] -= 10  # below every row's logit
    assert trained.names == ["0.weight", "2.weight"]
    scores = trained.scores
    assert torch.equal(scores["0.weight"], trained.logits["0.weight"][:, None].expand(32, 12))
    # the top 5 rows' weights (60 of 448) are exactly a density of 60/448: whole rows, nothing of the rest
    top = trained.at_density(60 / 448)["0.weight"]
    assert top.sum() == 60 and torch.equal(top, top[:, :1].expand(32, 12))
    assert torch.equal(top[:, 0], trained.logits["0.weight"] >= trained.logits["0.weight"].topk(5).values[-1])
    assert torch.equal(trained.decisions["0.weight"], trained.logits["0.weight"] > 0)


def test_baselines_rank_the_same_units():
    from modmask.core.baselines import importance

    model, x, y = _toy(4)
    units = _row_mask(model).units
    magnitude = importance(model, "magnitude", ["0.weight", "2.weight"], units=units)
    rows = model[0].weight.detach().abs().mean(1)  # a row's score: the mean of its weights'
    assert torch.allclose(magnitude["0.weight"], rows[:, None].expand(32, 12))
    assert torch.equal(magnitude["2.weight"], model[2].weight.detach().abs())
    random = [importance(model, "random", ["0.weight", "2.weight"], seed=s, units=units) for s in range(200)]
    assert all(torch.equal(r["0.weight"], r["0.weight"][:, :1].expand(32, 12)) for r in random)
    # one uniform draw per row, not the mean of 12: the spread of a uniform (std 0.29), not of a mean (0.08)
    assert torch.stack([r["0.weight"][:, 0] for r in random]).std() > 0.25
    with pytest.raises(ValueError, match=r"needs all their parameters.*\['0.weight'\]"):
        importance(model, "magnitude", ["2.weight"], units=units)


def test_random_controls_of_a_unit_mask_draw_units(monkeypatch):
    import modmask.core.evaluation as evaluation

    model, x, y = _toy(5)
    trained = _row_mask(model, 1)
    seen = []
    monkeypatch.setattr(evaluation, "evaluate", lambda model, masks, *a, **k: seen.append(masks) or 0.0)
    for keep in (True, False):
        evaluation.random_control(model, trained.decisions, [(x, y)], lambda o, t: o[:, 0], draws=3, keep=keep,
                                  units=trained.units)
    rows_kept = int(trained.decisions["0.weight"].sum())
    for index, masks in enumerate(seen):
        rows = masks["0.weight"]
        assert torch.equal(rows, rows[:, :1].expand(32, 12))  # whole rows
        assert int(rows[:, 0].sum()) == (rows_kept if index < 3 else 32 - rows_kept)  # kept, then removed
    assert not all(torch.equal(seen[0]["0.weight"], m["0.weight"]) for m in seen[1:3])  # the draws differ


def test_head_masks_of_torch_multihead_attention_learn_which_heads_a_function_needs():
    """nn.MultiheadAttention reads its out_proj weight without calling it, so no gate could act there:
    its heads multiply their weights. Trained (beta 0) to match the model with heads 1 and 3 of every
    layer removed, the mask removes exactly those (a head logit the loss never reached would stay kept)."""
    from modmask import masked_call

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    _, units = plan_units(model, names, "*self_attn*=head,weight")
    assert [u.gate for u in units] == [None, None] and units[0].module == "0.layers.0.self_attn"
    removed = torch.tensor([True, False, True, False])
    target = {}
    for u in units:
        target.update(u.expand(removed))
    x = torch.randn(64, 5, 32)
    y = masked_call(model, target, x).detach()
    trained = train_mask(model, [(x, y)], F.mse_loss, steps=150, lr=0.1, beta=0.0, granularity="*self_attn*=head,weight",
                         parameters="*self_attn*weight", progress=False)
    assert all(torch.equal(trained.unit_masks[u.name], removed) for u in units)


transformers = pytest.importorskip("transformers")


def _gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=20, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(config).eval()


def _lm_loss(out, ids):
    return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_a_head_or_neuron_gate_is_its_weights_removed(removal):
    """What training runs (a head's samples on its projection's input) and what evaluation reads
    (every weight of the head removed) are one function, in both removal modes."""
    from modmask import masked_call
    from modmask.core.removal import mean_inputs, shifted

    model = _gpt2()
    ids = torch.randint(0, 20, (8, 10))
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n]
    _, units = plan_units(model, names, "*.attn.*=head,*.mlp.*=neuron")
    assert [u.kind for u in units] == ["head", "head", "neuron", "neuron"]
    assert units[0].unit_names()[:2] == ["layer 0 head 0", "layer 0 head 1"]
    generator = torch.Generator().manual_seed(1)
    kept = {u.name: torch.rand(u.count, generator=generator) > 0.5 for u in units}
    weights = {}
    for u in units:
        weights.update(u.expand(kept[u.name]))
    expected = masked_call(model, weights, input_ids=ids, removal=removal).logits
    gates = {u.gate[0]: kept[u.name].float().repeat_interleave(u.gate[1]) for u in units}
    means = {}
    if removal == "mean":
        reference = mean_inputs(model, [{"input_ids": ids}], [f"{m}.weight" for m in gates])
        means = {m: reference.uses[f"{m}.weight"].mean for m in gates}
    with torch.no_grad(), shifted(model, {"gates": gates, "gate_means": means}, None):
        gated = model(input_ids=ids).logits
    assert torch.allclose(gated, expected, atol=1e-5)


def test_head_masks_train_on_a_gpt2_and_read_as_heads(tmp_path):
    model = _gpt2(1)
    ids = torch.randint(0, 20, (16, 10))
    batches = [({"input_ids": ids}, ids)]
    runs = {path: train_mask(model, batches, _lm_loss, steps=6, granularity="*.attn.*=head,weight",
                             parameters="transformer.h.*.weight", norms=False, path=path, progress=False)
            for path in ("vmap", "sequential")}
    trained = runs["vmap"]
    heads = [u for u in trained.units if u.kind == "head"]
    assert [u.name for u in heads] == ["transformer.h.0.attn.c_proj:heads", "transformer.h.1.attn.c_proj:heads"]
    assert all(trained.logits[u.name].shape == (4,) for u in heads)
    for name in trained.logits:
        assert torch.allclose(trained.logits[name], runs["sequential"].logits[name], atol=1e-5)
    masks = trained.masks  # read as weights: c_attn's q/k/v columns and c_proj's rows of each head
    assert masks["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    assert "transformer.h.0.mlp.c_fc.weight" in masks  # weights elsewhere
    mean = train_mask(model, batches, _lm_loss, steps=4, granularity="*.attn.*=head,weight", removal="mean",
                      parameters="transformer.h.*.weight", norms=False, progress=False)
    assert all(torch.isfinite(l).all() for l in mean.logits.values())
    trained.save(tmp_path / "heads.safetensors")
    assert TrainedMask.load(tmp_path / "heads.safetensors", model).units == trained.units


def test_head_granularity_where_there_are_no_heads_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"granularity 'head' does not fit \['0.weight'\].*attention projection"):
        plan_units(model, ["0.weight", "2.weight"], "0.*=head,weight")
    gpt = _gpt2()
    with pytest.raises(ValueError, match=r"\['transformer.h.0.attn.c_proj.weight'\] are selected with another granularity"):
        plan_units(gpt, ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight"],
                   "*.c_attn.*=head,weight")


@pytest.mark.parametrize("path", ["vmap", "sequential"])
def test_row_copies_are_made_in_the_forwards_float_type(path):
    # as the weights' copies: an fp32 copy would be cast again by autocast, and both kept for the backward
    from modmask import Execution

    model, x, y = _toy()
    trainer = MaskTrainer(model, F.cross_entropy, MaskConfig(k=4, granularity="0.weight=row,weight"),
                          Execution(precision="bf16", path=path)).prepare([(x[:64], y[:64])])
    noise = [source.reserve(4, [l.shape[1:] for l in trainer.logits.values()]) for source in trainer.sources]
    masked, _ = trainer._masked(noise, {}, 0, 4, torch.bfloat16)
    assert masked["0.weight"].dtype == torch.bfloat16 and masked["0.weight"].shape == (4, 32, 12)
    trainer.step([(x[:64], y[:64])])
    assert trainer.logits["0.weight"].grad.dtype == torch.float32 and trainer.logits["0.weight"].grad.abs().sum() > 0
