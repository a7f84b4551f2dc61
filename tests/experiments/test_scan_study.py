"""SCAN: the encoder-decoder on tiny generated data, decoding, and the study end to end."""

import json
from dataclasses import replace
from functools import partial

import torch

from modmask import cli
from modmask.core.masking import masked_call
from modmask.data.scan import ScanData, ScanVocabulary, make_split_files
from modmask.data.scan_grammar import generate_commands, interpret
from modmask.experiments import scan
import pytest

from modmask import Execution, MaskConfig, MaskTrainer, TrainedMask, train_mask, train_masks
from modmask.models import LSTMEncoderDecoder, TransformerEncoderDecoder
from modmask.models.seq2seq import sequence_correct, sequence_loss


def _pairs(count=200, seed=0):
    return [(tuple(c.split()), tuple(interpret(c))) for c in generate_commands(count, seed)]


def _tiny(kind, vocab):
    sizes = len(vocab.in_words) + 1, len(vocab.out_words) + 1
    torch.manual_seed(0)
    if kind == "lstm":
        return LSTMEncoderDecoder(*sizes, 8, 16, dropout=0.0).eval()
    return TransformerEncoderDecoder(*sizes, d_model=16, heads=2, ff_size=32, layers=2, dropout=0.0).eval()


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_teacher_forced_and_greedy_decoding_agree_when_the_model_is_right(kind):
    vocab = ScanVocabulary.build([_pairs()])
    (src, src_len), (tgt, tgt_len) = ScanData(_pairs(8, 1), vocab).encode(slice(None))
    model = _tiny(kind, vocab)
    steps = tgt.shape[1]
    greedy = model(src, src_len, steps)
    fed_its_own = model(src, src_len, steps, greedy.argmax(-1))
    assert torch.allclose(greedy, fed_its_own, atol=1e-5)  # teacher forcing with its own outputs
    assert greedy.shape == (8, steps, len(vocab.out_words) + 1)
    perfect = torch.nn.functional.one_hot(tgt, len(vocab.out_words) + 1).float() * 20
    assert sequence_correct(perfect, tgt, tgt_len).all()
    assert sequence_loss(perfect, tgt, tgt_len) < 1e-3
    wrong = perfect.clone()
    wrong[0, tgt_len[0] - 1] = 0  # the EOS of the first example is no longer predicted
    assert sequence_correct(wrong, tgt, tgt_len).tolist()[1:] == [True] * 7 and not sequence_correct(wrong, tgt, tgt_len)[0]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_encoder_ignores_padding(kind):
    vocab = ScanVocabulary.build([_pairs()])
    model = _tiny(kind, vocab)
    (src, src_len), (tgt, _) = ScanData(_pairs(4, 2), vocab).encode(slice(None))
    longer = torch.cat([src, torch.full((4, 5), 3)], dim=1)  # other tokens after the end
    assert torch.allclose(model(src, src_len, 6), model(longer, src_len, 6), atol=1e-6)
    assert torch.allclose(masked_call(model, {}, src, src_len, 6), model(src, src_len, 6))


def test_transformer_decoder_is_causal_and_batches_over_mask_samples():
    vocab = ScanVocabulary.build([_pairs()])
    model = _tiny("transformer", vocab)
    (src, src_len), (tgt, tgt_len) = ScanData(_pairs(8, 4), vocab).encode(slice(None))
    steps = tgt.shape[1]
    changed = tgt.clone()
    changed[:, 3:] = 0  # later target tokens must not change earlier outputs
    full, cut = model(src, src_len, steps, tgt), model(src, src_len, steps, changed)
    assert torch.allclose(full[:, :4], cut[:, :4], atol=1e-6) and not torch.allclose(full[:, 4:], cut[:, 4:])
    results = {}
    for path in ("vmap", "sequential"):  # masked training batches the model exactly over mask samples
        batch = ((src, src_len, steps, tgt), (tgt, tgt_len))
        trainer = MaskTrainer(model, lambda out, t: sequence_loss(out, *t), MaskConfig(k=4, norms=True),
                              Execution(path=path), seed=3).prepare([batch])
        losses = trainer.step([batch])[0]
        results[path] = losses["loss"], {n: g.grad.clone() for n, g in trainer.logits.items()}
        assert trainer.path == path
    (loss_v, grads_v), (loss_s, grads_s) = results["vmap"], results["sequential"]
    assert torch.allclose(loss_v, loss_s, atol=1e-5)
    assert all(torch.allclose(grads_v[n], grads_s[n], atol=1e-5) for n in grads_v)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_forced_chooses_teacher_forcing_per_example(kind):
    vocab = ScanVocabulary.build([_pairs()])
    (src, src_len), (tgt, _) = ScanData(_pairs(6, 4), vocab).encode(slice(None))
    model, steps = _tiny(kind, vocab), tgt.shape[1]
    forced = torch.tensor([True, False, True, False, False, True])
    mixed = model(src, src_len, steps, tgt, forced)
    assert torch.allclose(mixed[forced], model(src, src_len, steps, tgt)[forced], atol=1e-5)
    assert torch.allclose(mixed[~forced], model(src, src_len, steps)[~forced], atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_joint_scan_masks_with_padded_batches_equal_masks_trained_alone(kind):
    """Batches of other lengths, some teacher-forced and some not, padded alike for one call."""
    from modmask.experiments.seq2seq import SequenceBatches, loss, padded_alike

    vocab = ScanVocabulary.build([_pairs()])
    model = _tiny(kind, vocab)
    data = [ScanData(_pairs(40, 10 + i), vocab) for i in range(3)]
    batches = lambda: [SequenceBatches(d, 8, seed=i, teacher_forcing=0.5) for i, d in enumerate(data)]  # noqa: E731
    config = MaskConfig(steps=6, k=2, lr=0.1, beta=1e-3)
    streams = batches()
    shapes = [next(s) for s in streams]
    assert len({b[0][0].shape[1] for b in shapes}) > 1 and len({b[0][3] is None for b in shapes}) > 1  # mixed
    alone = [train_mask(model, b, loss, config, seed=i, progress=False) for i, b in enumerate(batches())]
    joint = train_masks(model, [(b, loss) for b in batches()], config, seeds=[0, 1, 2], progress=False,
                        collate=padded_alike(vocab))
    for a, b in zip(alone, joint):
        for name in a.logits:
            assert torch.allclose(a.logits[name], b.logits[name], atol=1e-4), name
    assert any((l != 2.0).any() for l in joint[0].logits.values())


def test_a_joint_scan_stage_killed_mid_way_resumes_to_the_same_masks(tmp_path,
                                                                     kill_joint_stage_after_first_checkpoint):
    """Samplers and teacher-forcing coins are checkpointed with the stage (mixed forcing, padded batches)."""
    from modmask.experiments.seq2seq import SequenceBatches, loss, padded_alike
    from modmask.runs.stage import Stage, mask_stages
    from modmask.runs import RunDir

    vocab = ScanVocabulary.build([_pairs()])
    model = _tiny("lstm", vocab)
    data = [ScanData(_pairs(40, 10 + i), vocab) for i in range(3)]
    stages = lambda: [Stage(f"split{i}", SequenceBatches(d, 8, seed=i, teacher_forcing=0.5), loss, i)  # noqa: E731
                      for i, d in enumerate(data)]
    train = partial(mask_stages, model=model, config=MaskConfig(steps=7, k=2, lr=0.1), progress=False,
                    checkpoint_every=3, collate=padded_alike(vocab))
    with pytest.raises(KeyboardInterrupt):
        train(RunDir(tmp_path / "killed"), stages=stages())
    kill_joint_stage_after_first_checkpoint()  # undo: train normally again
    assert (tmp_path / "killed/checkpoints/masks-partial.pt").exists()
    resumed = train(RunDir(tmp_path / "killed"), stages=stages())
    whole = train(RunDir(tmp_path / "whole"), stages=stages())
    for name, mask in whole.items():
        for tensor in mask.logits:
            assert torch.equal(mask.logits[tensor], resumed[name].logits[tensor]), (name, tensor)


def test_scan_batches_resume_from_their_state():
    from modmask.experiments.seq2seq import SequenceBatches

    vocab = ScanVocabulary.build([_pairs()])
    batches = SequenceBatches(ScanData(_pairs(50, 5), vocab), 8, seed=3, teacher_forcing=0.5)
    next(batches)
    state = batches.state()
    expected = [next(batches) for _ in range(4)]
    resumed = SequenceBatches(ScanData(_pairs(50, 5), vocab), 8, seed=99, teacher_forcing=0.5)
    resumed.load_state(state)
    for (inputs, targets), (inputs2, targets2) in zip(expected, [next(resumed) for _ in range(4)]):
        assert torch.equal(inputs[0], inputs2[0]) and (inputs[3] is None) == (inputs2[3] is None)


@pytest.mark.parametrize("preset", ["smoke", "smoke-transformer"])
def test_scan_smoke_end_to_end(tmp_path, preset):
    root = make_split_files(tmp_path / "data", _pairs(300, 3))
    assert cli.main(["run", "scan", "--preset", preset, "--out", str(tmp_path / "run"), "--quiet",
                     "--set", f"data={root}", "--set", "mask.lr=0.3"]) == 0
    agg = json.loads((tmp_path / "run/results.json").read_text())["aggregate"]
    assert set(agg["accuracy"]) == {"no mask", "simple", "jump", "length", "turn_left"}
    assert set(agg["output_removed"]) == {"I_TURN_LEFT", "I_TURN_RIGHT", "I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "EOS"}
    assert set(agg["baseline"]) == {"jump", "length", "turn_left"}
    for key in ("control", "control_pooled"):
        assert set(agg[key]) == {"jump", "length", "turn_left"} and 0 <= agg[key]["jump"]["mean"] <= 100
    report = (tmp_path / "run/report.md").read_text()
    assert "Against the random control: on jump" in report and "| random pooled control |" in report
    assert (tmp_path / "run/figures/accuracy.png").exists() and (tmp_path / "run/report.md").exists()
    # the accuracy table and the split controls in both removal modes (every smoke value is 0: the shape is pinned)
    block = agg["removal_modes"]
    assert block["trained_with"] == "zero" and list(block["modes"]) == ["zero", "mean"]
    zero, mean = block["modes"]["zero"], block["modes"]["mean"]
    assert list(zero) == list(mean) == [*agg["accuracy"], "random jump", "random length", "random turn_left",
                                        "random pooled jump", "random pooled length", "random pooled turn_left"]
    assert zero["jump"] == agg["accuracy"]["jump"] and zero["random pooled jump"] == {"jump": agg["control_pooled"]["jump"]}
    assert set(mean["simple"]) == set(scan.SPLITS) and set(mean["random length"]) == {"length"}
    assert "## Test accuracy in both removal modes [%]" in report and "| random pooled turn_left |" in report
    _assert_scan_curves(tmp_path / "run", root, agg, preset)


def _assert_scan_curves(out, root, agg, preset):
    """On each split's test set the split mask's and the full-problem mask's rankings, on the IID
    test set every mask's, beside the baselines; the masks' curves are the saved logits evaluated by
    hand on the test sets' first examples; the report shows a section per function and the gap. (The
    smoke networks decode no sequence right, so every value is 0 here: which ranking meets which
    data is pinned by test_scan_curves_rank_each_test_set_by_its_masks.)"""
    from safetensors.torch import load_model

    from modmask import CurveConfig, TrainedMask, density_curves
    from modmask.config import resolve
    from modmask.experiments.seq2seq import correct, eval_batches

    config = resolve(scan.Config, scan.PRESETS, preset, {"data": str(root)})
    vocab = ScanVocabulary.load(str(root))
    model = scan._model(config, vocab, 0)
    load_model(model, str(out / "seed-0/checkpoints/pretrained.safetensors"))
    logits = {n: TrainedMask.load(out / f"seed-0/masks/{n}.safetensors").logits for n in scan.SPLITS}
    baselines = ["magnitude", "wanda", "taylor", "random", "random per tensor"]
    assert set(agg["curves"]) == {"jump", "length", "turn_left", "iid"}
    for function, split in (("jump", "jump"), ("length", "length"), ("turn_left", "turn_left"), ("iid", "simple")):
        curve = agg["curves"][function]
        ranked = ["simple", split] if function != "iid" else list(scan.SPLITS)
        assert list(curve["methods"]) == [*(f"mask {m}" for m in ranked), *baselines], function
        test = eval_batches(ScanData.load(split, "test", vocab, str(root)), 1000)  # the smoke presets read all
        expected = density_curves(model.eval(), {f"mask {m}": logits[m] for m in ranked}, test, correct,
                                  CurveConfig((0.01, 0.1, 0.5), ()))
        assert curve["full"]["mean"] == pytest.approx(expected["full"]), function
        for method, values in expected["methods"].items():
            for side in ("sufficiency", "necessity"):
                assert [v["mean"] for v in curve["methods"][method][side]] == pytest.approx(values[side]), (function, method)
    report = (out / "report.md").read_text()
    assert "## Curves over density" in report and "| jump mask |" in report and "| full-problem mask |" in report
    assert "![curves iid](figures/curves_iid.png)" in report and "On the jump test set: " in report
    assert "Read as rankings: on turn_left" in report and "; on jump" in report


def test_scan_curves_read_examples_their_baselines_do_not(tmp_path):
    """curves.examples: the curve evaluates the first examples of each test set; the baselines read
    teacher-forced batches of the others (all of them where the curve reads all)."""
    pairs = _pairs(120, 4)
    vocab = ScanVocabulary.build([pairs])
    test = {s: ScanData(pairs[20 * i:20 * i + 20], vocab) for i, s in enumerate(scan.SPLITS)}
    few = scan.curve_functions(test, scan.Config(batch_size=8, curves=scan.CurveConfig(examples=5)), seed=0)
    assert list(few) == ["iid", "jump", "length", "turn_left"]
    jump = few["jump"]
    (src, _, _, teacher), _ = jump.eval[0]
    assert len(jump.eval) == 1 and len(src) == 5 and teacher is None  # greedy, on the first 5 of jump's test set
    assert torch.equal(src, test["jump"].encode(slice(0, 5))[0][0])
    assert len(jump.train) == 8 and all(inputs[3] is not None for inputs, _ in jump.train)  # teacher-forced
    drawn = {tuple(vocab.decode_in(row)) for inputs, _ in jump.train for row in inputs[0]}
    assert drawn <= {command for command, _ in test["jump"].pairs[5:]}  # the examples the curve does not evaluate
    every = scan.curve_functions(test, scan.Config(batch_size=8), seed=0)  # examples 1000 > 20: all of them
    assert sum(len(y[0]) for _, y in every["iid"].eval) == 20 and every["iid"].title == "the IID test set (simple split)"
    with pytest.raises(ValueError, match="curves.train .* is not available in scan.*leave curves.train=false"):
        scan.Config(curves=scan.CurveConfig(train=True))


@pytest.mark.parametrize("preset", ["smoke", "smoke-transformer"])
def test_joint_and_one_at_a_time_scan_masks_agree(tmp_path, preset):
    """The smoke presets end to end with mask.joint on and off: the same masks (the LSTM's steps mix
    teacher-forced and greedy batches)."""
    root = make_split_files(tmp_path / "data", _pairs(300, 3))
    aggregates = {}
    for joint in ("true", "false"):
        out = tmp_path / f"joint-{joint}"
        assert cli.main(["run", "scan", "--preset", preset, "--out", str(out), "--quiet", "--set", f"data={root}",
                         "--set", "baseline=false", "--set", "mask.lr=0.3", "--set", f"execution.joint={joint}"]) == 0
        aggregates[joint] = json.loads((out / "results.json").read_text())["aggregate"]
        timings = json.loads((out / "seed-0/timings.json").read_text())
        assert ("masks:simple,jump,length,turn_left" in timings) == (joint == "true")
    joint, separate = aggregates["true"], aggregates["false"]
    assert any(value["mean"] < 1 for value in joint["densities"].values())  # the masks trained
    for name, value in joint["densities"].items():
        assert value["mean"] == pytest.approx(separate["densities"][name]["mean"], abs=2e-3), name
    for condition, values in joint["accuracy"].items():
        for split, value in values.items():
            assert value["mean"] == pytest.approx(separate["accuracy"][condition][split]["mean"], abs=2), condition


def test_baseline_on_a_subset_of_splits_and_unknown_splits_are_an_error(tmp_path):
    root = make_split_files(tmp_path / "data", _pairs(300, 3))
    assert cli.main(["run", "scan", "--preset", "smoke", "--out", str(tmp_path / "run"), "--quiet",
                     "--set", f"data={root}", "--set", "baseline_splits=jump"]) == 0
    agg = json.loads((tmp_path / "run/results.json").read_text())["aggregate"]
    assert set(agg["baseline"]) == {"jump"}
    assert "From scratch on the split: jump" in (tmp_path / "run/report.md").read_text()
    with pytest.raises(ValueError, match="unknown baseline_splits.*simple"):
        scan.Config(baseline_splits=("simple",))


def test_scan_curves_rank_each_test_set_by_its_masks(monkeypatch):
    """A split's test set is ranked by its own mask and the full-problem mask, the IID test set by
    every mask, each function with its own data."""
    from modmask.runs import study

    seen = {}

    def spy(model, rankings, batches, metric, config, **kwargs):
        seen[len(seen)] = ([m for m in rankings if m.startswith("mask ")], batches)
        return {"methods": {m: {} for m in rankings}}

    monkeypatch.setattr(study, "density_curves", spy)
    pairs = _pairs(80, 5)
    vocab = ScanVocabulary.build([pairs])
    test = {s: ScanData(pairs[20 * i:20 * i + 20], vocab) for i, s in enumerate(scan.SPLITS)}
    model = _tiny("lstm", vocab)
    trained = {s: TrainedMask({n: torch.zeros(p.shape) for n, p in model.named_parameters()}) for s in scan.SPLITS}
    config = scan.Config(batch_size=4, curves=scan.CurveConfig(baselines=("magnitude",)))
    block = scan.scan_curves(model, trained, test, config, seed=0)
    assert list(block) == ["iid", "jump", "length", "turn_left"]
    assert [masks for masks, _ in seen.values()] == [
        ["mask simple", "mask jump", "mask length", "mask turn_left"], ["mask simple", "mask jump"],
        ["mask simple", "mask length"], ["mask simple", "mask turn_left"]]
    for index, split in enumerate(scan.SPLITS):
        (src, *_), _ = seen[index][1][0]
        assert torch.equal(src, test[split].encode(slice(None))[0][0]), split
    only = scan.scan_curves(model, trained, test, replace(config, curves=replace(config.curves, functions=("j*",))), 0)
    assert list(only) == ["jump"]
    with pytest.raises(ValueError, match=r"curves.functions \['jmp'\]: \['jmp'\] match\(es\) none of the study's "
                                         r"functions \['iid', 'jump', 'length', 'turn_left'\]"):
        scan.scan_curves(model, trained, test, replace(config, curves=replace(config.curves, functions=("jmp",))), 0)
