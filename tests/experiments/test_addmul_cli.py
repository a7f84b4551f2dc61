"""The add/mul smoke preset end to end through the command line, resume, and reports."""

import json

import pytest

from modmask import cli
from modmask.runs import stage


def _run(out, *extra):
    return cli.main(["run", "addmul", "--preset", "smoke", "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("addmul")
    assert _run(out, "--set", "mask.joint=false") == 0  # one mask at a time: the reference of the joint tests
    return out


def test_smoke_run_writes_every_artifact(finished):
    seed = finished / "seed-0"
    for path in ["config.json", "results.json", "report.md", "figures/accuracy.png", "figures/confusion.png",
                 "figures/half_mask.png", "figures/histogram.png", "figures/iou_add_mul.png",
                 "seed-0/metrics.jsonl", "seed-0/timings.json", "seed-0/checkpoints/pretrained.safetensors",
                 "seed-0/masks/full.safetensors", "seed-0/masks/add.safetensors", "seed-0/masks/mul.safetensors"]:
        assert (finished / path).exists(), path
    results = json.loads((finished / "results.json").read_text())
    accuracy = results["aggregate"]["accuracy"]
    assert set(accuracy) >= {"Full", "+", "¬+", "*", "¬*", "No mask"}
    assert 0 <= accuracy["Full"]["+"]["mean"] <= 100
    confusion = results["aggregate"]["confusion"]["Full"]
    assert len(confusion) == 2 and len(confusion[0]) == 3
    timings = json.loads((seed / "timings.json").read_text())
    assert set(timings) == {"pretrain", "mask:full", "mask:add", "mask:mul"}
    report = (finished / "report.md").read_text()
    assert "| + |" in report and "![accuracy](figures/accuracy.png)" in report
    assert not list(finished.rglob("*.tmp"))


def test_report_rebuilds_without_training(finished, capsys):
    (finished / "report.md").unlink()
    assert cli.main(["report", str(finished)]) == 0
    assert (finished / "report.md").exists()


def test_resume_after_interruption_gives_the_same_results(finished, tmp_path, monkeypatch):
    """Masks one at a time (mask.joint=false): a run killed in its second mask stage resumes there."""
    out = tmp_path / "interrupted"
    real = stage.train_mask
    calls = []

    def dies_on_the_second_mask(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "train_mask", dies_on_the_second_mask)
    with pytest.raises(KeyboardInterrupt):
        _run(out, "--set", "mask.joint=false")
    assert (out / "seed-0/masks/full.safetensors").exists()
    assert not (out / "seed-0/masks/add.safetensors").exists()
    monkeypatch.setattr(stage, "train_mask", real)
    before = {phase: _phase_lines(out, phase) for phase in ("pretrain", "mask:full", "mask:add")}
    assert before["pretrain"] > 0 and before["mask:full"] > 0 and before["mask:add"] == 0
    assert _run(out, "--set", "mask.joint=false") == 0
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


def test_a_joint_mask_stage_killed_mid_way_resumes_from_its_checkpoint(finished, tmp_path,
                                                                       kill_joint_stage_after_first_checkpoint):
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(out, "--set", "checkpoint_every=20", "--set", "mask.joint=true")
    assert (out / "seed-0/checkpoints/masks-partial.pt").exists()
    assert not list((out / "seed-0/masks").glob("*.safetensors"))
    kill_joint_stage_after_first_checkpoint()  # undo: train normally again
    assert _run(out, "--set", "checkpoint_every=20", "--set", "mask.joint=true") == 0
    assert json.loads((out / "seed-0/timings.json").read_text()).keys() == {"pretrain", "masks:full,add,mul"}
    assert _phase_lines(out, "mask:add") == 1 + 1  # step 0 before the kill, step 39 after: nothing redone
    assert not (out / "seed-0/checkpoints/masks-partial.pt").exists()
    resumed = json.loads((out / "results.json").read_text())["aggregate"]
    fresh = json.loads((finished / "results.json").read_text())["aggregate"]
    for key in ("accuracy", "confusion", "half_mask"):
        assert resumed[key] == fresh[key], key


def test_joint_and_one_at_a_time_masks_agree(finished, tmp_path):
    assert _run(tmp_path, "--set", "mask.joint=true") == 0
    joint = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    separate = json.loads((finished / "results.json").read_text())["aggregate"]
    assert separate["masks"]["counts"] == joint["masks"]["counts"]
    for condition, values in joint["accuracy"].items():
        for op, value in values.items():
            assert value["mean"] == pytest.approx(separate["accuracy"][condition][op]["mean"], abs=0.2), condition


def test_resuming_with_other_settings_is_refused(finished, capsys):
    assert _run(finished, "--set", "beta=0.5") == 2
    assert "holds a run with other settings (mask.beta)" in capsys.readouterr().err


def test_settings_that_do_not_change_the_results_may_differ_on_resume(finished):
    assert _run(finished, "--set", "mask.joint=true", "--set", "mask.samples_per_pass=2",
                "--set", "mask.path=sequential") == 0
    assert json.loads((finished / "config.json").read_text())["mask"]["joint"] is False  # as it started


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    from modmask.launch.runner import plan

    saved = plan("addmul", "smoke", {}, tmp_path / "new").described
    del saved["mask"]["compiled"], saved["lr"]  # settings added after the run was made
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
