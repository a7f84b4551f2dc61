"""Sweeps on a local Ray instance with 2 workers: the add/mul smoke preset over 2 seeds x 2 betas,
a restart skips finished runs, a worker killed mid-run is retried and the aggregate is complete;
grid errors come before Ray starts; the sweep report; the tracking adapters."""

import json
import os
import struct
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import ray

from modmask import cli, tracking
from modmask.launch import sweep
from modmask.runs import RunDir, write_json

BETAS = ["beta=0.0001", "beta=0.001"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs: 2 runs at once) for the module; sweeps reuse it."""
    assert sweep.start_ray(workers=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(local_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    argv = ["sweep", "addmul", "--preset", "smoke", "--grid", "beta=1e-4,1e-3", "--seeds", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sweep_runs_every_point_and_seed_and_aggregates(swept):
    described = json.loads((swept / "sweep.json").read_text())
    assert described["grid"] == {"beta": [0.0001, 0.001]} and described["seeds"] == 2
    assert [p["name"] for p in described["points"]] == BETAS
    for name, beta in zip(BETAS, (1e-4, 1e-3)):
        point = swept / name
        assert json.loads((point / "config.json").read_text())["mask"]["beta"] == beta
        for seed in (0, 1):
            assert (point / f"seed-{seed}/results.json").exists()
            assert (point / f"seed-{seed}/masks/mul.safetensors").exists()
        summary = json.loads((point / "results.json").read_text())  # an ordinary run directory
        assert summary["seeds"] == 2 and set(summary["aggregate"]["accuracy"]["Full"]["iid"]) == {"mean", "std", "n"}
    results = json.loads((swept / "sweep_results.json").read_text())
    for point in results["points"]:
        assert point["seeds"] == [0, 1]
        per_seed = [json.loads((swept / point["name"] / f"seed-{s}/results.json").read_text()) for s in (0, 1)]
        shared = [r["masks"]["overlap"]["add|mul"][-1]["shared_add"] for r in per_seed]
        assert point["headline"]["add shared with mul"]["mean"] == pytest.approx(sum(shared) / 2)
        assert point["headline"]["add shared with mul"]["std"] == pytest.approx(abs(shared[0] - shared[1]) / 2 ** 0.5)
        assert point["headline"]["add shared with mul"]["n"] == 2  # the sample std over n seeds
        first = per_seed[0]["accuracy"]["No mask"]["+"]  # then the first numbers of the rest of the results
        assert point["headline"]["accuracy/No mask/+"]["mean"] == pytest.approx(
            (first + per_seed[1]["accuracy"]["No mask"]["+"]) / 2)
    report = (swept / "report.md").read_text()
    assert "| 0.0001 | 2/2 |" in report and "| 0.001 | 2/2 |" in report
    assert "![sharing vs beta](figures/sharing_vs_beta.png)" in report
    assert (swept / "figures/sharing_vs_beta.png").exists()


def test_restart_skips_finished_runs(swept, monkeypatch):
    runs = {f"{p}/seed-{s}": swept / p / f"seed-{s}" for p in BETAS for s in (0, 1)}
    before = {name: ((run / "results.json").stat().st_mtime_ns, len(_lines(run / "metrics.jsonl")))
              for name, run in runs.items()}
    # Everything finished: nothing is submitted and Ray is not even started.
    monkeypatch.setattr(sweep, "start_ray", lambda *a, **k: pytest.fail("Ray started for a finished sweep"))
    summary = sweep.run_sweep("addmul", "smoke", ["beta=1e-4,1e-3"], 2, swept)
    assert (summary["skipped"], summary["ran"], summary["failed"]) == (4, 0, [])
    # One run lost its results (killed before the end): only that run runs again, and it resumes.
    monkeypatch.undo()
    (runs["beta=0.001/seed-1"] / "results.json").unlink()
    assert cli.main(["sweep", "addmul", "--preset", "smoke", "--grid", "beta=1e-4,1e-3", "--seeds", "2",
                     "--out", str(swept)]) == 0
    after = {name: ((run / "results.json").stat().st_mtime_ns, len(_lines(run / "metrics.jsonl")))
             for name, run in runs.items()}
    for name in runs:
        if name == "beta=0.001/seed-1":
            assert after[name][0] != before[name][0]  # results written again
            assert after[name][1] == before[name][1]  # from the finished stages: no training redone
        else:
            assert after[name] == before[name], name


def _killed_once(marker: str):
    """sweep.run_task, except that the first task to create `marker` kills its own worker process
    as soon as its run has written metrics, as a lost worker would."""

    def task(experiment, preset, values, out, seed, *args):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return sweep.run_task(experiment, preset, values, out, seed, *args)
        metrics = Path(out) / f"seed-{seed}" / "metrics.jsonl"

        def watch():
            while not (metrics.exists() and metrics.stat().st_size > 0):
                time.sleep(0.005)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
        return sweep.run_task(experiment, preset, values, out, seed, *args)

    return task


def test_killed_worker_is_retried_and_the_aggregate_is_complete(local_ray, tmp_path):
    marker = tmp_path / "killed"
    out = tmp_path / "sweep"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    summary = sweep.run_sweep("addmul", "smoke", ["beta=1e-4"], 2, out, retries=2, track=["tensorboard"],
                              task=_killed_once(str(marker)))
    assert marker.exists(), "no worker was killed"
    assert (summary["ran"], summary["failed"]) == (2, [])
    restarted = []
    for seed in (0, 1):
        run = out / "beta=0.0001" / f"seed-{seed}"
        for path in ("results.json", "checkpoints/pretrained.safetensors", "masks/full.safetensors",
                     "masks/add.safetensors", "masks/mul.safetensors", "timings.json"):
            assert (run / path).exists(), (seed, path)
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        first_steps = [r for r in _lines(run / "metrics.jsonl") if r["phase"] == "pretrain" and r["step"] == 0]
        restarted.append(len(first_steps) == 2)  # the killed attempt had written its first line
    assert sorted(restarted) == [False, True]
    assert cli.main(["report", str(out)]) == 0
    point = json.loads((out / "sweep_results.json").read_text())["points"][0]
    assert point["seeds"] == [0, 1] and point["aggregate"]["masks"] is not None
    assert json.loads((out / "beta=0.0001/results.json").read_text())["seeds"] == 2


def test_grid_errors_come_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    out = tmp_path / "sweep"
    base = ["sweep", "addmul", "--preset", "smoke", "--out", str(out)]
    assert cli.main(base + ["--grid", "nope=1,2"]) == 2
    assert "unknown config key 'nope'; valid keys:" in capsys.readouterr().err
    assert cli.main(base + ["--grid", "beta=1e-4,abc"]) == 2
    assert "beta expects a float, not 'abc'" in capsys.readouterr().err
    assert cli.main(base + ["--grid", "beta=1e-4", "--set", "beta=1e-3"]) == 2
    assert "both set (--set) and swept (--grid)" in capsys.readouterr().err
    assert not out.exists()


def test_without_ray_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert cli.main(["sweep", "addmul", "--preset", "smoke", "--out", str(tmp_path / "s")]) == 2
    assert "pip install 'modmask[sweep]'" in capsys.readouterr().err


def test_grid_values_and_point_names():
    fixed, axes, points = sweep.plan_grid("addmul", ["hidden=16,16;32,32", "beta=1e-4", "beta=0.001,1e-4"],
                                          ["k=2"])
    assert fixed == {"mask.k": 2} and axes == {"hidden": [(16, 16), (32, 32)], "beta": [1e-4, 1e-3]}
    assert [p.name for p in points] == ["hidden=16x16,beta=0.0001", "hidden=16x16,beta=0.001",
                                        "hidden=32x32,beta=0.0001", "hidden=32x32,beta=0.001"]
    assert points[1].values == {"hidden": (16, 16), "beta": 1e-3}
    assert [p.name for p in sweep.plan_grid("addmul")[2]] == ["base"]
    assert sweep.plan_grid("addmul", ["mask.beta=1e-4"])[1] == {"mask.beta": [1e-4]}
    with pytest.raises(ValueError, match="both set"):
        sweep.plan_grid("addmul", ["mask.beta=1e-4"], ["beta=1e-3"])


def _addmul_results(shared_add, iou):
    accuracy = {c: {"+": 90.0, "*": 80.0, "iid": 85.0} for c in ("Full", "+", "*", "¬+", "¬*")}
    layer = {"tensor": "layers.0.weight", "shared_add": 0.9, "shared_mul": 0.9, "iou": 0.9}
    total = {"tensor": "total", "shared_add": shared_add, "shared_mul": shared_add / 2, "iou": iou}
    return {"accuracy": accuracy, "masks": {"overlap": {"add|mul": [layer, total]}}, "timings": {"pretrain": 1.0}}


def test_report_of_a_size_and_beta_grid_without_training(tmp_path):
    """Sharing against network size (one figure per beta) and against beta (one per size)."""
    sizes, betas = [[16, 16], [32, 32]], [1e-4, 1e-3]
    points = [{"name": f"hidden={'x'.join(map(str, h))},beta={b!r}", "values": {"hidden": h, "beta": b}}
              for h in sizes for b in betas]
    write_json(tmp_path / "sweep.json", {"experiment": "addmul", "preset": "smoke", "set": {},
                                         "grid": {"hidden": sizes, "beta": betas}, "seeds": 2, "points": points})
    for i, point in enumerate(points):
        for seed in (0, 1) if i else (0,):  # the first point lacks a seed
            write_json(tmp_path / point["name"] / f"seed-{seed}/results.json", _addmul_results(0.1 * i + 0.2 * seed, 0.5))
    assert cli.main(["report", str(tmp_path)]) == 0
    names = ["sharing_vs_hidden-beta=0.0001", "sharing_vs_hidden-beta=0.001", "sharing_vs_beta-hidden=16x16",
             "sharing_vs_beta-hidden=32x32"]
    assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == sorted(names)
    results = json.loads((tmp_path / "sweep_results.json").read_text())["points"]
    assert results[0]["seeds"] == [0] and results[3]["seeds"] == [0, 1]
    assert results[3]["headline"]["add shared with mul"] == pytest.approx({"mean": 0.4, "std": 0.2 / 2 ** 0.5, "n": 2})
    assert results[3]["headline"]["IoU (add, mul)"] == pytest.approx({"mean": 0.5, "std": 0.0, "n": 2})
    report = (tmp_path / "report.md").read_text()
    assert "| 16x16 | 0.0001 | 1/2 |" in report and "Incomplete: hidden=16x16,beta=0.0001 (1/2 seeds)" in report
    assert "![sharing vs hidden](figures/sharing_vs_hidden-beta=0.0001.png)" in report


def _study_results(shared, lr):
    """A user's study (run_study) of three functions: three pairs of masks, titles in `functions`."""
    pairs = {f"{a}|{b}": [{"tensor": "total", f"shared_{a}": shared, f"shared_{b}": shared / 2, "iou": lr}]
             for a, b in (("x", "y"), ("x", "z"), ("y", "z"))}
    return {"functions": {"x": "X", "y": "Y", "z": "Z"}, "metric": {"none": {"x": 1.0, "y": 0.5, "z": 0.25}},
            "masks": {"overlap": pairs, "counts": {"x": {"total": 7}}}, "timings": {"mask": 2.0}}


def test_report_of_any_experiment_reads_the_pairs_its_results_name(tmp_path):
    """No experiment is special: the headline and the figures come from the mask pairs the results
    compare (titled as the results title them), the rest of the headline from their first numbers."""
    lrs = [0.001, 0.01, 0.1]
    points = [{"name": f"lr={lr!r}", "values": {"lr": lr}} for lr in lrs]
    write_json(tmp_path / "sweep.json", {"experiment": "mine", "preset": "p", "set": {}, "grid": {"lr": lrs},
                                         "seeds": 1, "points": points})
    for i, point in enumerate(points):
        write_json(tmp_path / point["name"] / "seed-0/results.json", _study_results(0.1 * i, lrs[i]))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == [
        "sharing_x_y_vs_lr.png", "sharing_x_z_vs_lr.png", "sharing_y_z_vs_lr.png"]
    headline = json.loads((tmp_path / "sweep_results.json").read_text())["points"][2]["headline"]
    assert list(headline) == ["X shared with Y", "Y shared with X", "IoU (X, Y)", "X shared with Z", "Z shared with X",
                              "IoU (X, Z)", "Y shared with Z", "Z shared with Y", "IoU (Y, Z)",
                              "metric/none/x", "metric/none/y", "metric/none/z", "time [s]"]
    assert headline["X shared with Z"]["mean"] == pytest.approx(0.2) and headline["Z shared with Y"]["mean"] == 0.1
    assert headline["IoU (Y, Z)"]["mean"] == 0.1
    assert headline["metric/none/y"]["mean"] == 0.5 and headline["time [s]"]["mean"] == 2.0


def test_report_of_results_without_masks_shows_their_first_numbers(tmp_path):
    points = [{"name": f"tasks={t}", "values": {"tasks": t}} for t in (3, 2)]
    write_json(tmp_path / "sweep.json", {"experiment": "permuted_mnist", "preset": "smoke", "set": {},
                                         "grid": {"tasks": [3, 2]}, "seeds": 1, "points": points})
    for point, t in zip(points, (3, 2)):
        write_json(tmp_path / point["name"] / "seed-0/results.json",
                   {"accuracy": [90.0 + i for i in range(t)], "timings": {"mask": 1.0}})
    assert cli.main(["report", str(tmp_path)]) == 0
    assert not list(tmp_path.glob("figures/*.png"))
    headline = json.loads((tmp_path / "sweep_results.json").read_text())["points"][0]["headline"]
    assert {k: v["mean"] for k, v in headline.items()} == {"accuracy[0]": 90.0, "accuracy[1]": 91.0,
                                                            "accuracy[2]": 92.0, "time [s]": 1.0}
    assert "| 2 | 1/1 | 90.000 | 91.000 | n/a | 1.0 |" in (tmp_path / "report.md").read_text()


def _scalars(directory):
    """(tag, step, value) of every scalar in the TensorBoard event files under `directory`."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):  # TFRecord: length (u64), its CRC (u32), payload, payload CRC (u32)
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            found += [(v.tag, event.step, v.simple_value) for v in event.summary.value if v.HasField("simple_value")]
    return found


def test_tensorboard_adapter_writes_each_phase_as_scalars(tmp_path):
    run = RunDir(tmp_path)
    with tracking.open_trackers(["tensorboard"], run.path, "demo/seed-0", {"beta": 1e-4}) as trackers:
        run.on_log = trackers.log
        run.log({"phase": "pretrain", "step": 0, "loss": 2.5})
        run.log({"phase": "pretrain", "step": 200, "loss": 1.5})
        run.log({"phase": "mask:add", "step": 0, "loss": 0.5, "density": 0.9, "note": "text is skipped"})
    assert len(_lines(tmp_path / "metrics.jsonl")) == 3
    assert _scalars(tmp_path / "tensorboard") == [("pretrain/loss", 0, 2.5), ("pretrain/loss", 200, 1.5),
                                                  ("mask/add/loss", 0, 0.5), ("mask/add/density", 0, pytest.approx(0.9))]


def test_wandb_adapter_logs_offline_with_a_step_axis_per_phase(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def define_metric(self, name, step_metric=None):
            calls.append(("define", name, step_metric))

        def log(self, row):
            calls.append(("log", row))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with tracking.open_trackers(["wandb"], tmp_path, "demo/seed-0", {"beta": 1e-4}) as trackers:
        trackers.log({"phase": "pretrain", "step": 0, "loss": 2.5})
        trackers.log({"phase": "pretrain", "step": 200, "loss": 1.5})
    init_kwargs = calls[0][1]
    assert init_kwargs["mode"] == "offline" and init_kwargs["dir"] == str(tmp_path)
    assert init_kwargs["config"] == {"beta": 1e-4} and init_kwargs["name"] == "demo/seed-0"
    assert calls[1:] == [("define", "pretrain/step", None), ("define", "pretrain/*", "pretrain/step"),
                         ("log", {"pretrain/loss": 2.5, "pretrain/step": 0}),
                         ("log", {"pretrain/loss": 1.5, "pretrain/step": 200}), ("finish",)]


def test_missing_tracker_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert cli.main(["run", "addmul", "--preset", "smoke", "--out", str(tmp_path / "r"), "--track", "wandb"]) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert cli.main(["run", "addmul", "--preset", "smoke", "--out", str(tmp_path / "r"), "--track", "mlflow"]) == 2
    assert "unknown tracker(s) ['mlflow']" in capsys.readouterr().err
