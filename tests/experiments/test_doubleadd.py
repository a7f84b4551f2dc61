import json

import pytest
import torch

from modmask import cli
from modmask.experiments.doubleadd import copy_pair_weights, io_layers
from modmask.models import PairLSTM, PairwiseFNN


def test_pairwise_fnn_reads_each_pair_only_from_its_own_run():
    model = PairwiseFNN([8])
    x = torch.rand(3, 80)
    out = model(x)
    other = x.clone()
    other[:, 40:] = torch.rand(3, 40)  # change pair 2's inputs: pair 1's output must not move
    assert torch.equal(model(other)[:, :20], out[:, :20])
    assert not torch.equal(model(other)[:, 20:], out[:, 20:])


def test_only_one_io_lstm_reads_pair_1_before_it_sees_pair_2():
    model = PairLSTM(8, "only_one_io")
    x = torch.rand(2, 80)
    changed = x.clone()
    changed[:, 40:] = 0
    assert torch.allclose(model(changed)[:, :20], model(x)[:, :20])


def test_copy_weight_control_makes_the_pairs_compute_the_same_function():
    model = PairwiseFNN([16, 16])
    control = copy_pair_weights(model)
    x = torch.rand(4, 40)
    as_pair1 = control(torch.cat([x, torch.zeros(4, 40)], 1))[:, :20]
    as_pair2 = control(torch.cat([torch.zeros(4, 40), x], 1))[:, 20:]
    assert torch.allclose(as_pair1, as_pair2)
    assert not torch.equal(model.net.layers[0].weight, control.net.layers[0].weight)  # original untouched


def test_io_layers():
    names = [n for n, p in PairwiseFNN([4, 4]).named_parameters() if p.dim() == 2]
    assert io_layers(PairwiseFNN([4, 4]), names) == ["net.layers.0.weight", "net.layers.2.weight"]
    lstm = PairLSTM(4)
    names = [n for n, p in lstm.named_parameters() if p.dim() == 2]
    assert io_layers(lstm, names) == ["lstm.cells.0.weight_ih", "output.weight"]


def test_doubleadd_smoke_end_to_end(tmp_path):
    # masks trained hard enough to drop weights (the smoke run's keep every one), so the Full mask differs from all
    # the masks train under mean removal: the report says so beside the removal table of both modes
    assert cli.main(["run", "doubleadd", "--preset", "smoke", "--out", str(tmp_path), "--quiet",
                     "--set", "mask.lr=0.3", "--set", "mask.beta=0.01", "--set", "curves.train=true",
                     "--set", "mask.removal=mean"]) == 0
    agg = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    assert set(agg["accuracy"]) >= {"Full", "Pair 1", "¬Pair 1", "Pair 2", "¬Pair 2"}
    assert set(agg["accuracy"]["Full"]) == {"pair 1", "pair 2"}
    assert "control" in agg and agg["control"]["masks"]["overlap"]["pair1|pair2"]
    for name in ["report.md", "figures/accuracy.png", "figures/accuracy_io_from_full.png",
                 "figures/control_accuracy.png", "figures/control/iou_pair1_pair2.png", "figures/half_mask.png",
                 "seed-0/masks/control_pair2.safetensors", "figures/curves_pair1.png",
                 "figures/curves_io_from_full_pair2.png"]:
        assert (tmp_path / name).exists(), name
    _assert_curves_of_the_pair_masks(tmp_path, agg)
    assert "random ¬Pair 1 | random pooled ¬Pair 1 |" in (tmp_path / "report.md").read_text()
    _assert_removal_in_both_modes(tmp_path, agg)


def _assert_removal_in_both_modes(out, agg):
    """The accuracy table (zero removal) as it is and under mean removal, the mode the masks trained in named."""
    from safetensors.torch import load_model

    from modmask import TrainedMask, evaluate, inverse, random_control
    from modmask.data.arithmetic import DoubleAddData
    from modmask.data.sampling import fixed_batches
    from modmask.experiments.doubleadd import Config, _pair_correct, build_model

    block = agg["removal_modes"]
    assert block["trained_with"] == "mean" and list(block["modes"]) == ["zero", "mean"]
    zero, mean = block["modes"]["zero"], block["modes"]["mean"]
    assert zero == agg["accuracy"] and list(mean) == list(zero) and mean != zero
    model = build_model(Config(hidden=(32, 32)), seed=0)
    load_model(model, str(out / "seed-0/checkpoints/pretrained.safetensors"))
    pair1 = TrainedMask.load(out / "seed-0/masks/pair1.safetensors", model)
    assert pair1.removal == "mean"
    valid = fixed_batches(DoubleAddData.generate("valid", 1_000), 1000)
    assert mean["¬Pair 1"]["pair 1"]["mean"] == pytest.approx(
        evaluate(model, inverse(pair1.masks), valid, _pair_correct(0), removal="mean") * 100)
    assert mean["random pooled ¬Pair 1"]["pair 2"]["mean"] == pytest.approx(random_control(
        model, pair1.masks, valid, _pair_correct(1), 5, seed=0, match="pooled", removal="mean")["mean"] * 100)
    report = (out / "report.md").read_text()
    assert "### Per-pair accuracy in both removal modes [%]" in report and "Masks trained with `mean` removal" in report
    assert "| condition | pair 1, zero | pair 1, mean | pair 2, zero | pair 2, mean |" in report


def _assert_curves_of_the_pair_masks(out, agg):
    """Both pairs under each pair mask's ranking (and the masks trained to each density), over all
    masked tensors and over the hidden layer only, the input and output layers then kept as the saved
    Full mask keeps them (pinned: the metric with the whole hidden layer kept, and with none of it)."""
    from safetensors.torch import load_model

    from modmask import Masks, TrainedMask, evaluate
    from modmask.data.arithmetic import DoubleAddData
    from modmask.data.sampling import fixed_batches
    from modmask.experiments.doubleadd import Config, _pair_correct, build_model

    model = build_model(Config(hidden=(32, 32)), seed=0)
    load_model(model, str(out / "seed-0/checkpoints/pretrained.safetensors"))
    full = TrainedMask.load(out / "seed-0/masks/full.safetensors", model).masks
    valid = fixed_batches(DoubleAddData.generate("valid", 1_000), 1000)
    io = ["net.layers.0.weight", "net.layers.2.weight"]
    assert not all(full[n].all() for n in io)  # the rest mask differs from full weights
    for key, subset in (("curves", list(full)), ("curves_io_from_full", ["net.layers.1.weight"])):
        assert set(agg[key]) == {"pair1", "pair2"}
        for pair, name in enumerate(("pair1", "pair2")):
            curve = agg[key][name]
            assert curve["subset"] == subset and [d["mean"] for d in curve["densities"]] == [0.01, 0.1, 0.5]
            # the masks trained to each density (curves.train) in the curves over all masked tensors only
            trained = ["trained pair1", "trained pair2"] if key == "curves" else []
            assert list(curve["methods"]) == ["mask pair1", "mask pair2", *trained, "magnitude", "wanda", "taylor",
                                              "random", "random per tensor"]
            outside = {} if key == "curves" else full.only(io)
            empty = {**outside, **{n: full[n] & False for n in subset}}
            assert curve["full"]["mean"] == pytest.approx(evaluate(model, outside, valid, _pair_correct(pair)))
            assert curve["empty"]["mean"] == pytest.approx(evaluate(model, Masks(empty), valid, _pair_correct(pair)))
    for pair, name in enumerate(("pair1", "pair2")):  # each pair's mask at 10% on its own pair
        at = TrainedMask.load(out / f"seed-0/masks/{name}@0.1.safetensors", model)
        assert at.diagnosis["target_density"] == 0.1
        values = agg["curves"][name]["methods"][f"trained {name}"]
        assert values["sufficiency"][1]["mean"] == pytest.approx(evaluate(model, at.masks, valid, _pair_correct(pair)))
    report = (out / "report.md").read_text()
    assert "### Curves over density, hidden layers only" in report and "| Pair 2 mask |" in report
    assert "![curves_io_from_full pair1](figures/curves_io_from_full_pair1.png)" in report


def test_doubleadd_lstm_smoke(tmp_path):
    args = ["run", "doubleadd", "--preset", "smoke", "--out", str(tmp_path), "--quiet",
            "--set", "model=lstm", "--set", "lstm_mode=only_one_io", "--set", "control=false"]
    assert cli.main(args) == 0
    assert "LSTM 2x16 (only_one_io)" in (tmp_path / "report.md").read_text()


def test_each_pair_mask_trains_on_its_own_pair_inputs():
    """The pair masks train on their own pair's inputs, and the curves' baselines score each pair on
    the same (8 fixed batches)."""
    from modmask.data.arithmetic import DoubleAddData
    from modmask.experiments.doubleadd import Config, _curve_functions, _functions
    data = DoubleAddData.generate("valid", 64)
    functions = _functions(data, [], Config(batch_size=8), seed=0)
    curve_functions = _curve_functions(data, [], Config(batch_size=8), seed=0)
    assert [f.name for f in curve_functions] == ["pair1", "pair2"] and all(len(f.train) == 8 for f in curve_functions)
    for pair, function in [*zip((0, 1), functions[1:]), *zip((0, 1), curve_functions)]:
        x, _ = next(iter(function.train))
        shown = slice(pair * 40, pair * 40 + 40)
        hidden = slice((1 - pair) * 40, (1 - pair) * 40 + 40)
        assert x[:, shown].sum() > 0 and x[:, hidden].sum() == 0, function.name


def test_a_doubleadd_joint_stage_killed_mid_way_resumes_to_the_same_masks(tmp_path,
                                                                          kill_joint_stage_after_first_checkpoint):
    """The pair masks' batches (the other pair's inputs zeroed) are checkpointed with the stage."""
    from modmask.core.training import TrainedMask

    def run(out):
        return cli.main(["run", "doubleadd", "--preset", "smoke", "--out", str(out), "--quiet",
                         "--set", "control=false", "--set", "checkpoint_every=20", "--set", "random_draws=0"])

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    kill_joint_stage_after_first_checkpoint()  # undo: train normally again
    assert (tmp_path / "killed/seed-0/checkpoints/masks-partial.pt").exists()
    assert run(tmp_path / "killed") == 0 and run(tmp_path / "whole") == 0
    for name in ("full", "pair1", "pair2"):
        resumed = TrainedMask.load(tmp_path / f"killed/seed-0/masks/{name}.safetensors").logits
        whole = TrainedMask.load(tmp_path / f"whole/seed-0/masks/{name}.safetensors").logits
        assert all(torch.equal(resumed[n], whole[n]) for n in whole), name
    # the baselines read fixed batches drawn from the seed, not the mask stage's: the same after a resume
    resumed, whole = (json.loads((tmp_path / f"{run}/results.json").read_text())["aggregate"]["curves"]
                      for run in ("killed", "whole"))
    assert resumed == whole


def test_each_inverse_pair_mask_has_random_removal_per_tensor_and_pooled(monkeypatch):
    """The rows of the accuracy table are random_control of their own mask: kept, removed per tensor,
    removed pooled, the I/O layers as the inverse treats them (the smoke run's masks are all empty,
    where every random removal gives the same numbers, so the wiring is pinned here)."""
    from modmask import Masks
    from modmask.experiments import doubleadd

    calls = []

    def spy(model, masks, batches, metric, draws, seed, keep, match, full=None, keep_full_on=(), removal="zero",
            reference=None):
        assert removal == "zero"  # _accuracies' default mode
        calls.append((next(n for n, m in named.items() if m is masks), keep, match, tuple(keep_full_on), seed))
        return {"mean": 0.5}

    monkeypatch.setattr(doubleadd, "random_control", spy)
    model = PairwiseFNN([4])
    named = {n: Masks({k: torch.rand(p.shape) < 0.5 for k, p in model.named_parameters() if p.dim() == 2})
             for n in ("full", "pair1", "pair2")}
    from modmask.data.arithmetic import DoubleAddData
    from modmask.data.sampling import fixed_batches

    valid, io = fixed_batches(DoubleAddData.generate("valid", 20), 20), ("net.layers.1.weight",)
    accuracy = doubleadd._accuracies(model, named, valid, list(io), draws=3, seed=1)
    assert accuracy["random pooled ¬Pair 2"] == {"pair 1": 50.0, "pair 2": 50.0}
    assert sorted(set(calls)) == sorted({("pair1", True, "tensor", (), 1000), ("pair1", False, "tensor", io, 1000),
                                         ("pair1", False, "pooled", io, 1000), ("pair2", True, "tensor", (), 1001),
                                         ("pair2", False, "tensor", io, 1001), ("pair2", False, "pooled", io, 1001)})
