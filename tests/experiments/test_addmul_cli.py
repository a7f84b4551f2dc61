"""The add/mul smoke preset end to end through the command line, resume, and reports."""

import json

import pytest
import torch

from modmask import cli
from modmask.runs import stage


def _run(out, *extra):
    return cli.main(["run", "addmul", "--preset", "smoke", "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("addmul")
    assert _run(out, "--set", "execution.joint=false") == 0  # one mask at a time: the reference of the joint tests
    return out


def test_smoke_run_writes_every_artifact(finished):
    seed = finished / "seed-0"
    for path in ["config.json", "results.json", "report.md", "figures/accuracy.png", "figures/confusion.png",
                 "figures/half_mask.png", "figures/histogram.png", "figures/iou_add_mul.png",
                 "seed-0/metrics.jsonl", "seed-0/timings.json", "seed-0/checkpoints/pretrained.safetensors",
                 "seed-0/masks/full.safetensors", "seed-0/masks/add.safetensors", "seed-0/masks/mul.safetensors",
                 "figures/curves_add.png", "figures/curves_mul.png"]:
        assert (finished / path).exists(), path
    results = json.loads((finished / "results.json").read_text())
    accuracy = results["aggregate"]["accuracy"]
    assert set(accuracy) >= {"Full", "+", "¬+", "*", "¬*", "No mask"}
    _assert_accuracy_is_the_saved_masks_on_their_functions(finished)
    confusion = results["aggregate"]["confusion"]["Full"]
    assert len(confusion) == 2 and len(confusion[0]) == 3
    timings = json.loads((seed / "timings.json").read_text())
    assert set(timings) == {"pretrain", "mask:full", "mask:add", "mask:mul", "curves"}
    report = (finished / "report.md").read_text()
    assert "| + |" in report and "![accuracy](figures/accuracy.png)" in report
    _assert_curves_are_the_saved_rankings_on_their_functions(finished, [0.01, 0.1, 0.5])
    assert "## Curves over density" in report and "| + mask |" in report and "| random (per tensor) |" in report
    assert "![curves mul](figures/curves_mul.png)" in report and "On multiplication: Full mask:" in report
    # every stage's diagnosis, from its mask file into the results and the report (40 smoke steps: too
    # few logs to judge whether a mask settled, which the report says with the fix)
    training = results["per_seed"][0]["training"]
    assert set(training) == {"full", "add", "mul"} and training["add"]["steps"] == 40
    assert "## Mask training" in report and "| add | 0/1 | 0/1 |" in report
    assert "add, seed 0: too few logged steps (2) to judge whether the mask settled" in report
    assert not list(finished.rglob("*.tmp"))


CONDITIONS = {"No mask": None, "Full": "full", "¬Full": "not full", "+": "add", "¬+": "not add", "*": "mul",
              "¬*": "not mul"}


def _saved_model_masks_and_columns(out):
    """The run's pretrained network, its masks (by stage name) and the evaluation batches of its
    accuracy columns, read from the files, as a user of the run would."""
    from safetensors.torch import load_model

    from modmask import TrainedMask
    from modmask.data.arithmetic import ADD, MUL, AddMulData
    from modmask.data.sampling import fixed_batches
    from modmask.experiments import addmul

    model = addmul.build_model(addmul.Config(hidden=(32, 32)), seed=0)  # the smoke preset's FNN
    load_model(model, str(out / "seed-0/checkpoints/pretrained.safetensors"))
    masks = {name: TrainedMask.load(out / f"seed-0/masks/{name}.safetensors", model).masks
             for name in ("full", "add", "mul")}
    valid = AddMulData.generate("valid", 1_000)
    columns = {op: fixed_batches(valid.subset(which), 1000) for op, which in (("+", ADD), ("*", MUL), ("iid", None))}
    return model.eval(), masks, columns


def _assert_accuracy_is_the_saved_masks_on_their_functions(out, draws=0):
    """Every row of the accuracy table is its own mask (or inverse) evaluated on its own column's data,
    and with `draws`, every random row is random_control of its own mask (keep or remove)."""
    from modmask import evaluate, inverse, random_control
    from modmask.data.arithmetic import digits_correct

    model, masks, columns = _saved_model_masks_and_columns(out)
    accuracy = json.loads((out / "results.json").read_text())["aggregate"]["accuracy"]
    for label, condition in CONDITIONS.items():
        chosen = (None if condition is None else inverse(masks[condition[4:]]) if condition.startswith("not ")
                  else masks[condition])
        for op, batches in columns.items():
            expected = evaluate(model, chosen, batches, digits_correct) * 100
            assert accuracy[label][op]["mean"] == pytest.approx(expected, rel=1e-6), (label, op)
    for index, (name, label) in enumerate((("full", "Full"), ("add", "+"), ("mul", "*")) if draws else ()):
        for keep, match, row in ((True, "tensor", f"random {label}"), (False, "tensor", f"random ¬{label}"),
                                 (False, "pooled", f"random pooled ¬{label}")):
            for op, batches in columns.items():
                control = random_control(model, masks[name], batches, digits_correct, draws, seed=index, keep=keep,
                                         match=match)
                assert accuracy[row][op]["mean"] == pytest.approx(control["mean"] * 100, rel=1e-6), (row, op)
    return accuracy


def _assert_curves_are_the_saved_rankings_on_their_functions(out, densities, baselines=(
        "magnitude", "wanda", "taylor", "random", "random per tensor")):
    """The curves hold, on the add and the mul validation sets, each saved mask's logit ranking (and
    the baselines and both random controls) at the run's densities; each mask's values are its
    ranking evaluated by hand."""
    from modmask import CurveConfig, TrainedMask, density_curves
    from modmask.data.arithmetic import digits_correct

    model, _, columns = _saved_model_masks_and_columns(out)
    curves = json.loads((out / "results.json").read_text())["aggregate"]["curves"]
    assert set(curves) == {"add", "mul"}
    for function, column in (("add", "+"), ("mul", "*")):
        curve = curves[function]
        assert [d["mean"] for d in curve["densities"]] == densities
        assert list(curve["methods"]) == ["mask full", "mask add", "mask mul", *baselines]
        rankings = {f"mask {n}": TrainedMask.load(out / f"seed-0/masks/{n}.safetensors").logits for n in ("add", "mul")}
        expected = density_curves(model, rankings, columns[column], digits_correct, CurveConfig(densities, ()))
        for method, values in expected["methods"].items():
            for side in ("sufficiency", "necessity"):
                assert [v["mean"] for v in curve["methods"][method][side]] == pytest.approx(values[side]), (function, method)
    return curves


def test_smoke_accuracy_rows_are_their_own_masks(tmp_path):
    """Masks trained hard enough to differ (the smoke run's keep every weight): the accuracy table's
    rows and columns are pinned to the saved masks evaluated by hand, and rows a swap would exchange
    differ, so a swapped label cannot pass."""
    assert _run(tmp_path, "--set", "mask.lr=0.3", "--set", "mask.beta=0.01", "--set", "random_draws=2") == 0
    accuracy = _assert_accuracy_is_the_saved_masks_on_their_functions(tmp_path, draws=2)

    def row(label):
        return tuple(accuracy[label][op]["mean"] for op in ("+", "*", "iid"))

    for a, b in [("+", "*"), ("¬+", "¬*"), ("+", "¬+"), ("*", "¬*"), ("Full", "¬Full"), ("random ¬+", "random ¬*"),
                 ("random +", "random ¬+"), ("random *", "random ¬*"), ("random ¬*", "random pooled ¬*"),
                 ("random pooled ¬+", "random pooled ¬*")]:
        assert row(a) != row(b), (a, b)
    assert all(accuracy[label]["+"] != accuracy[label]["*"] for label in CONDITIONS)  # columns tell apart too
    _assert_removal_in_both_modes(tmp_path, draws=2)


def _assert_removal_in_both_modes(out, draws):
    """results["removal_modes"]: the accuracy table in zero mode as it is, and its rows and controls
    evaluated under mean removal in the mean mode; both side by side in the report."""
    from modmask import evaluate, inverse, random_control
    from modmask.data.arithmetic import digits_correct

    model, masks, columns = _saved_model_masks_and_columns(out)
    agg = json.loads((out / "results.json").read_text())["aggregate"]
    block = agg["removal_modes"]
    assert block["trained_with"] == "zero" and list(block["modes"]) == ["zero", "mean"]
    zero, mean = block["modes"]["zero"], block["modes"]["mean"]
    assert zero == agg["accuracy"] and list(mean) == list(zero)
    for op, batches in columns.items():
        expected = evaluate(model, inverse(masks["add"]), batches, digits_correct, removal="mean") * 100
        assert mean["¬+"][op]["mean"] == pytest.approx(expected, rel=1e-6), op
        control = random_control(model, masks["mul"], batches, digits_correct, draws, seed=2, match="pooled",
                                 removal="mean")
        assert mean["random pooled ¬*"][op]["mean"] == pytest.approx(control["mean"] * 100, rel=1e-6), op
    assert mean != zero
    report = (out / "report.md").read_text()
    assert "## Accuracy in both removal modes [%]" in report and "Masks trained with `zero` removal" in report
    assert "| condition | +, zero | +, mean | *, zero | *, mean | iid, zero | iid, mean |" in report


def _run_files(out):
    """Every file of a run but its report (report.md, figures/): (mtime, bytes) by relative path."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "report.md" and "figures" not in p.relative_to(out).parts}


def test_report_rebuilds_without_training(finished, monkeypatch):
    import torch

    def no_gradients(*args, **kwargs):
        raise AssertionError("`modmask report` computed a gradient: it must only read the results")

    monkeypatch.setattr(torch.autograd, "backward", no_gradients)  # every training step goes through it
    monkeypatch.setattr(torch.Tensor, "backward", no_gradients)
    before = _run_files(finished)
    assert {"results.json", "seed-0/metrics.jsonl", "seed-0/masks/add.safetensors"} <= set(before)
    (finished / "report.md").unlink()
    (finished / "figures/accuracy.png").unlink()
    assert cli.main(["report", str(finished)]) == 0
    assert "| + |" in (finished / "report.md").read_text() and (finished / "figures/accuracy.png").exists()
    after = _run_files(finished)
    changed = [path for path in before.keys() | after.keys() if before.get(path) != after.get(path)]
    assert not changed, f"the report rebuild wrote {changed} (masks, metrics or results: it trained or reran)"


def test_resume_after_interruption_gives_the_same_results(finished, tmp_path, monkeypatch):
    """Masks one at a time (execution.joint=false): a run killed in its second mask stage resumes there."""
    out = tmp_path / "interrupted"
    real = stage.train_masks
    calls = []

    def dies_on_the_second_mask(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "train_masks", dies_on_the_second_mask)
    with pytest.raises(KeyboardInterrupt):
        _run(out, "--set", "execution.joint=false")
    assert (out / "seed-0/masks/full.safetensors").exists()
    assert not (out / "seed-0/masks/add.safetensors").exists()
    monkeypatch.setattr(stage, "train_masks", real)
    before = {phase: _phase_lines(out, phase) for phase in ("pretrain", "mask:full", "mask:add")}
    assert before["pretrain"] > 0 and before["mask:full"] > 0 and before["mask:add"] == 0
    # resumed with other curve settings (free: they change only the analysis), which the results then use
    assert _run(out, "--set", "execution.joint=false", "--set", "curves.densities=0.05,0.5") == 0
    for config in (out / "config.json", out / "seed-0/config.json"):
        assert json.loads(config.read_text())["curves"]["densities"] == [0.05, 0.5], config
    curves = json.loads((out / "results.json").read_text())["aggregate"]["curves"]["mul"]
    assert [d["mean"] for d in curves["densities"]] == [0.05, 0.5]
    assert _phase_lines(out, "pretrain") == before["pretrain"]  # pretraining was not redone
    assert _phase_lines(out, "mask:full") == before["mask:full"]  # nor the finished mask
    assert _phase_lines(out, "mask:add") > 0
    resumed = json.loads((out / "results.json").read_text())["aggregate"]
    fresh = json.loads((finished / "results.json").read_text())["aggregate"]
    for key in ("accuracy", "confusion", "half_mask"):
        assert resumed[key] == fresh[key], key
    assert resumed["masks"]["counts"] == fresh["masks"]["counts"]


def _phase_lines(out, phase):
    lines = (out / "seed-0/metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["phase"] == phase for line in lines)


@pytest.mark.parametrize("joint, phases", [("true", {"pretrain", "masks:full,add,mul", "curves"}),
                                           ("false", {"pretrain", "mask:full", "mask:add", "mask:mul", "curves"})])
def test_a_mask_stage_killed_mid_way_resumes_from_its_checkpoint(finished, tmp_path, joint, phases,
                                                                 kill_joint_stage_after_first_checkpoint):
    """Joint or one at a time, a mask stage killed after its first checkpoint resumes from it: the
    killed mask logs step 0 before the kill and step 39 after (nothing redone), and the run ends
    with the uninterrupted run's results."""
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(out, "--set", "checkpoint_every=20", "--set", f"execution.joint={joint}")
    assert (out / "seed-0/checkpoints/masks-partial.pt").exists()
    assert not list((out / "seed-0/masks").glob("*.safetensors"))
    kill_joint_stage_after_first_checkpoint()  # undo: train normally again
    assert _run(out, "--set", "checkpoint_every=20", "--set", f"execution.joint={joint}") == 0
    assert json.loads((out / "seed-0/timings.json").read_text()).keys() == phases
    assert _phase_lines(out, "mask:full") == 1 + 1
    assert not (out / "seed-0/checkpoints/masks-partial.pt").exists()
    resumed = json.loads((out / "results.json").read_text())["aggregate"]
    fresh = json.loads((finished / "results.json").read_text())["aggregate"]
    for key in ("accuracy", "confusion", "half_mask"):
        assert resumed[key] == fresh[key], key


def test_joint_and_one_at_a_time_masks_agree(finished, tmp_path):
    assert _run(tmp_path, "--set", "execution.joint=true") == 0
    joint = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    separate = json.loads((finished / "results.json").read_text())["aggregate"]
    assert separate["masks"]["counts"] == joint["masks"]["counts"]
    for condition, values in joint["accuracy"].items():
        for op, value in values.items():
            assert value["mean"] == pytest.approx(separate["accuracy"][condition][op]["mean"], abs=0.2), condition


def test_resuming_with_other_settings_is_refused(finished, capsys):
    assert _run(finished, "--set", "beta=0.5") == 2
    assert "holds a run with other settings (mask.beta)" in capsys.readouterr().err


def test_settings_that_do_not_change_the_results_may_differ_on_resume(finished, caplog):
    assert _run(finished, "--set", "execution.joint=true", "--set", "execution.samples_per_pass=2",
                "--set", "execution.path=sequential", "--set", "curves.random_draws=2") == 0
    config = json.loads((finished / "config.json").read_text())
    assert config["execution"]["joint"] is False  # as it started
    # the finished seed's curves are read, not recomputed: config.json keeps the settings they were made with
    assert config["curves"]["random_draws"] == 1 and "modmask curve" in caplog.text


def _copy_run(finished, out):
    import shutil

    shutil.copytree(finished, out)  # copy2: the files keep their mtimes
    return out


def test_curve_recomputes_the_curves_of_a_finished_run_without_training(finished, tmp_path):
    out = _copy_run(finished, tmp_path / "run")
    untouched = {path: value for path, value in _run_files(out).items()
                 if path.startswith(("seed-0/masks/", "seed-0/checkpoints/")) or path == "seed-0/metrics.jsonl"}
    assert len(untouched) == 5  # 3 masks, the pretrained network, the metrics
    before = json.loads((out / "results.json").read_text())["aggregate"]
    assert cli.main(["curve", str(out), "--set", "curves.densities=0.02,0.2", "--set", "curves.baselines=random",
                     "--quiet"]) == 0
    after = _run_files(out)
    assert all(after[path] == value for path, value in untouched.items()), "retrained or rewrote masks or pretraining"
    results = json.loads((out / "results.json").read_text())["aggregate"]
    assert {k: v for k, v in results.items() if k not in ("curves", "timings")} == \
           {k: v for k, v in before.items() if k not in ("curves", "timings")}
    for config in (out / "config.json", out / "seed-0/config.json"):
        assert json.loads(config.read_text())["curves"]["densities"] == [0.02, 0.2], config
    assert "| magnitude |" not in (out / "report.md").read_text()
    _assert_curves_are_the_saved_rankings_on_their_functions(out, [0.02, 0.2], ("random", "random per tensor"))
    # over the last settings; curves.train trains the masks per density (once), the others stay as they are
    assert cli.main(["curve", str(out), "--set", "curves.random_draws=2", "--set", "curves.train=true", "--quiet"]) == 0
    curves = json.loads((out / "results.json").read_text())["aggregate"]["curves"]["add"]
    assert [d["mean"] for d in curves["densities"]] == [0.02, 0.2] and "sufficiency_std" in curves["methods"]["random"]
    assert {"trained add", "trained mul"} <= set(curves["methods"]) and (out / "seed-0/masks/mul@0.2.safetensors").exists()
    assert all(_run_files(out)[path] == value for path, value in untouched.items() if path != "seed-0/metrics.jsonl")


def test_curve_refuses_what_it_cannot_do_before_any_work(finished, tmp_path, capsys):
    assert cli.main(["curve", str(tmp_path / "nothing")]) == 2
    assert "is not a run directory (it has no config.json)" in capsys.readouterr().err
    assert cli.main(["curve", str(finished), "--set", "mask.beta=0.5"]) == 2
    assert "changes curve settings only (curves.*), not ['mask.beta']" in capsys.readouterr().err
    assert cli.main(["curve", str(finished), "--set", "curves.densities=0.5,0.1"]) == 2
    assert "strictly increasing" in capsys.readouterr().err


def test_seeds_with_curves_of_other_settings_are_not_averaged(finished, tmp_path):
    """A seed finished before a resume with other curve settings keeps its curves: collect refuses
    to average them with the others and names the fix."""
    import shutil

    from modmask.launch.runner import collect, plan

    out = _copy_run(finished, tmp_path / "run")
    shutil.copytree(out / "seed-0", out / "seed-1")
    config = json.loads((out / "seed-1/config.json").read_text())
    config["curves"]["densities"] = [0.02, 0.2]
    (out / "seed-1/config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="seeds' curves were computed with different settings.*modmask curve"):
        collect(plan("addmul", "smoke", {}, out))


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    from modmask.launch.runner import plan

    saved = plan("addmul", "smoke", {}, tmp_path / "new").described
    del saved["mask"]["original_clipping"], saved["lr"]  # settings added after the run was made
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    plan("addmul", "smoke", {}, tmp_path / "old")  # they hold their defaults: resumes
    with pytest.raises(ValueError, match="other settings \\(lr\\)"):
        plan("addmul", "smoke", {"lr": 5e-3}, tmp_path / "old")
    with pytest.raises(ValueError, match="other settings \\(mask.k\\)"):
        plan("addmul", "smoke", {"mask.k": 8}, tmp_path / "old")  # a saved key must match


def test_metrics_of_a_child_run_directory_reach_the_same_trackers(tmp_path):
    from modmask.runs import RunDir

    seen = []
    RunDir(tmp_path, on_log=seen.append).child("module").log({"phase": "pretrain", "step": 0})
    assert seen == [{"phase": "pretrain", "step": 0}] and (tmp_path / "module/metrics.jsonl").exists()


def test_bad_config_key_is_a_clear_error(tmp_path, capsys):
    assert _run(tmp_path / "x", "--set", "nope=1") == 2
    assert "unknown config key 'nope'; valid keys:" in capsys.readouterr().err


def test_list_shows_experiments_and_presets(capsys):
    assert cli.main(["list"]) == 0
    assert "addmul" in capsys.readouterr().out


def test_half_mask_figure_across_runs(finished, tmp_path):
    out = tmp_path / "half.png"
    assert cli.main(["half-mask", str(finished), str(finished), "--out", str(out)]) == 0
    assert out.exists() and "+/* FNN 32x32" in out.with_suffix(".md").read_text()
    assert cli.main(["half-mask", str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_the_curves_baselines_score_each_operation_on_fixed_batches_of_it():
    """taylor and wanda read 8 fixed training batches of the curve's own operation, drawn from the
    seed (not the mask stage's stream, so a resumed run reads the same)."""
    from modmask import CurveConfig
    from modmask.data.arithmetic import ADD, MUL, AddMulData, digit_loss, digits_correct
    from modmask.data.sampling import RandomBatches
    from modmask.experiments import addmul
    from modmask.runs.study import Function

    train, valid = AddMulData.generate("train", 2_000), AddMulData.generate("valid", 1_000)
    functions = [Function(name, RandomBatches(train.subset(op), 16, 1234), [], digit_loss, digits_correct, label)
                 for name, label, op in addmul.STAGES]
    curves = addmul.curve_functions(functions, valid, addmul.Config(batch_size=16), seed=0)
    assert [f.name for f in curves] == ["add", "mul"]
    for function, op in zip(curves, (ADD, MUL)):
        assert len(function.train) == 8 and function.loss is digit_loss
        assert all(inputs[:, 40 + op].all() and len(inputs) == 16 for inputs, _ in function.train)  # one-hot op
    again = addmul.curve_functions(functions, valid, addmul.Config(batch_size=16), seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(curves[0].train, again[0].train))
    # evaluated on the operation's validation examples, the first curves.examples of them
    assert [sum(len(y) for _, y in f.eval) for f in curves] == [len(valid.subset(ADD)), len(valid.subset(MUL))]
    few = addmul.curve_functions(functions, valid, addmul.Config(curves=CurveConfig(examples=30)), seed=0)
    assert [sum(len(y) for _, y in f.eval) for f in few] == [30, 30]
    assert torch.equal(few[1].eval[0][0], valid.subset(MUL).encode(slice(0, 30))[0])
