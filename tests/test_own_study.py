"""A user's own study through the documented `run_study` entry point, on a tiny model."""

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import CurveConfig, Function, run_study


def _task(which, n=1024, seed=0):
    """Two functions of separate inputs: label = sign of x[0] (task a) or of x[1] (task b)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    gate = torch.zeros(n, 2)
    gate[:, which] = 1
    return torch.cat([x * gate, gate], 1), (x[:, which] > 0).long()


def _batches(which, seed):
    x, y = _task(which, seed=seed)
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, len(x), (64,), generator=g)
        yield x[idx], y[idx]


def _trained():
    """A network trained on both tasks, and the two tasks as Functions."""
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    mixed = [_batches(0, 1), _batches(1, 2)]
    for step in range(400):
        x, y = next(mixed[step % 2])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
    functions = [Function(f"task{i}", _batches(i, 10 + i), [_task(i, seed=20 + i)], F.cross_entropy, correct)
                 for i in (0, 1)]
    return model, functions


def test_run_study_writes_masks_tables_and_report(tmp_path):
    model, functions = _trained()
    results = run_study(model, functions, tmp_path, steps=300, beta=0.02, progress=False,
                        curves=CurveConfig((0.05, 0.2, 0.5), random_draws=2))
    metric = results["metric"]
    assert metric["task0"]["task0"] > 0.9 and metric["task1"]["task1"] > 0.9
    # each inverse mask hurts its own function more than the other one
    assert metric["not task0"]["task0"] < metric["not task0"]["task1"]
    assert metric["not task1"]["task1"] < metric["not task1"]["task0"]
    for path in ["masks/task0.safetensors", "masks/task1.safetensors", "results.json", "report.md",
                 "figures/removal.png", "figures/iou_task0_task1.png", "figures/histogram.png"]:
        assert (tmp_path / path).exists(), path
    assert json.loads((tmp_path / "results.json").read_text())["masks"]["overlap"]["task0|task1"]
    assert "| not task0 |" in (tmp_path / "report.md").read_text()
    _assert_both_random_removals_are_reported(model, functions, results, tmp_path)
    _assert_removal_in_both_modes(model, functions, results, tmp_path)
    _assert_curves_are_reported(results, tmp_path)


def _assert_removal_in_both_modes(model, functions, results, out):
    """results["removal_modes"]: the zero mode is the removal matrix with its controls' means, the mean
    mode the same conditions evaluated under mean removal; both side by side in the report."""
    from modmask import TrainedMask, evaluate, inverse, random_control

    block = results["removal_modes"]
    assert block["trained_with"] == "zero" and list(block["modes"]) == ["zero", "mean"]
    zero, mean = block["modes"]["zero"], block["modes"]["mean"]
    assert list(zero) == list(mean) == [*results["metric"], *results["controls"]]
    assert zero["not task0"] == results["metric"]["not task0"]
    assert zero["random pooled not task1"]["task1"] == results["controls"]["random pooled not task1"]["task1"]["mean"]
    mask = TrainedMask.load(out / "masks/task0.safetensors").masks
    task0 = functions[0]
    assert mean["not task0"]["task0"] == pytest.approx(evaluate(model, inverse(mask), task0.eval, task0.metric,
                                                                removal="mean"))
    assert mean["random not task0"]["task0"] == pytest.approx(random_control(
        model, mask, task0.eval, task0.metric, 5, seed=0, removal="mean")["mean"])
    assert mean["none"] == zero["none"] and mean != zero  # the gate inputs have non-zero means: the modes differ
    report = (out / "report.md").read_text()
    assert "## Removal in both modes" in report and "Masks trained with `zero` removal" in report
    assert "| condition | task0, zero | task0, mean | task1, zero | task1, mean |" in report
    assert f"| random pooled not task1 | {zero['random pooled not task1']['task0']:.3f} |" in report


def _assert_both_random_removals_are_reported(model, functions, results, out):
    """Beside each inverse mask, random removal per tensor and pooled (seeded as removal_controls
    seeds them: draw r of mask i from seed 1000 * seed + i), in the table and in the verdict."""
    from modmask import TrainedMask, random_control

    for index, function in enumerate(functions):
        mask = TrainedMask.load(out / f"masks/{function.name}.safetensors").masks
        for match, label in (("tensor", f"random not {function.name}"), ("pooled", f"random pooled not {function.name}")):
            expected = random_control(model, mask, function.eval, function.metric, 5, seed=index, match=match)
            assert results["controls"][label][function.name]["mean"] == pytest.approx(expected["mean"]), label
    report = (out / "report.md").read_text()
    rows = [line.split(" |")[0] for line in report.splitlines() if line.startswith("| ")]
    assert rows[rows.index("| not task0"):][:3] == ["| not task0", "| random not task0", "| random pooled not task0"]
    assert "Removing the task0 mask costs task0" in report and "per tensor" in report and "random removal." in report


def _assert_curves_are_reported(results, out):
    """Every mask's logit ranking and every baseline on every function, in results.json (plain JSON)
    and in the report (a table with both random controls, a figure and a verdict per function)."""
    curves = json.loads((out / "results.json").read_text())["curves"]
    assert curves == json.loads(json.dumps(results["curves"]))
    for name in ("task0", "task1"):
        curve = curves[name]
        assert curve["densities"] == [0.05, 0.2, 0.5] and curve["subset"] == ["0.weight", "2.weight"]
        assert list(curve["methods"]) == ["mask task0", "mask task1", "magnitude", "wanda", "taylor", "random",
                                          "random per tensor"]
        assert all(len(m["necessity"]) == 3 and len(m["sufficiency_std"]) == 3 for m in
                   (curve["methods"]["random"], curve["methods"]["random per tensor"]))
        other = "task1" if name == "task0" else "task0"
        # each function is carried by its own mask's top weights, not by the other mask's
        assert curve["methods"][f"mask {name}"]["sufficiency_area"] > curve["methods"][f"mask {other}"]["sufficiency_area"] + 0.3
    report = (out / "report.md").read_text()
    assert "## Curves over density" in report and "| random (pooled) |" in report and "| random (per tensor) |" in report
    assert "On task0: mask task0: sufficiency area" in report and "stricter random control" in report
    assert (out / "figures/curves_task0.png").exists() and "![curves task1](figures/curves_task1.png)" in report


class MeanOfTokens(nn.Module):
    """Mean embedding of the first `lengths` tokens of each sequence, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.embedding, self.out = nn.Embedding(8, 8), nn.Linear(8, 2)

    def forward(self, ids, lengths):
        valid = (torch.arange(ids.shape[1]) < lengths[:, None]).float()
        return self.out((self.embedding(ids) * valid[..., None]).sum(1) / lengths[:, None])


def _sequences(length, seed):
    """Endless batches of 16 sequences of `length` tokens (other lengths per function); label: token 0 is even."""
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(0, 8, (16, length), generator=g)
        yield (ids, torch.full((16,), length)), (ids[:, 0] % 2 == 0).long()


def _pad_alike(batches):
    longest = max(inputs[0].shape[1] for inputs, _ in batches)
    return [((F.pad(ids, (0, longest - ids.shape[1])), lengths), y) for (ids, lengths), y in batches]


def test_a_study_of_unit_masks_reads_them_as_units(tmp_path, monkeypatch):
    """Column masks on the first layer (one logit per input): each task keeps its own input and drops the
    other's; the statistics, controls and curves read units, and the report names them."""
    import modmask.core.evaluation as evaluation

    model, functions = _trained()
    drawn = []
    original = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda model, masks, *a, **k: drawn.append(masks) or original(
        model, masks, *a, **k))
    results = run_study(model, functions, tmp_path, steps=300, beta=0.02, lr=0.05, progress=False, random_draws=2,
                        granularity="0.weight=column,weight",
                        curves=CurveConfig((0.3, 0.6), baselines=("magnitude", "random"), random_draws=1))
    kept = results["masks"]["units"]["kept"]
    assert kept["task0"]["0.weight"][0] == 1 and kept["task0"]["0.weight"][1] == 0  # its input, not the other's
    assert kept["task1"]["0.weight"][1] == 1 and kept["task1"]["0.weight"][0] == 0
    assert results["masks"]["units"]["matrix"]["per_layer"]["0.weight"]["iou"][0][1] < 1
    # every random draw of the controls removes or keeps whole columns of the first layer
    first = [m["0.weight"] for m in drawn if m and "0.weight" in m]
    assert first and all(bool((c == c[:1]).all()) for c in first)
    curve = results["curves"]["task0"]
    assert {"mask task0", "magnitude", "random"} <= set(curve["methods"])
    report = (tmp_path / "report.md").read_text()
    assert "**By unit**" in report and "kept by task0" in report and "| 0.weight | column | 4 |" in report
    assert (tmp_path / "figures" / "units_per_layer.png").exists()


def test_run_study_trains_functions_whose_batches_differ_in_shape_with_collate(tmp_path):
    model = MeanOfTokens()
    correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
    functions = [Function(f"len{n}", _sequences(n, n), [next(_sequences(n, 50 + n))], F.cross_entropy, correct)
                 for n in (3, 5)]
    with pytest.raises(ValueError, match="inputs of different shapes.*give `collate`"):
        run_study(model, functions, tmp_path / "plain", steps=3, progress=False, random_draws=0)
    results = run_study(model, functions, tmp_path / "padded", steps=3, progress=False, random_draws=0,
                        collate=_pad_alike, curves=CurveConfig(enabled=False))
    assert set(results["metric"]["none"]) == {"len3", "len5"} and "curves" not in results
    assert (tmp_path / "padded/masks/len5.safetensors").exists()


def test_a_joint_stage_that_cannot_be_checkpointed_says_so_before_training(tmp_path, caplog):
    """Generators have no state(): asked for checkpoints, the stage warns that a kill restarts it."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
    functions = [Function(f"task{i}", _batches(i, 10 + i), [_task(i, seed=20 + i)], F.cross_entropy, correct)
                 for i in (0, 1)]
    with caplog.at_level("WARNING"):
        results = run_study(model, functions, tmp_path, steps=2, progress=False, random_draws=0, checkpoint_every=1,
                            curves=None)
    assert "curves" not in results
    assert "the batches of task0, task1 have no state()" in caplog.text and "from step 0" in caplog.text


def test_run_study_trains_a_mask_to_each_density_of_the_curves_when_asked(tmp_path):
    """curves.train: one mask per function and density (target_density), in one pass, saved; each
    function's curves then hold every such mask as it was trained (with the density it kept)."""
    from modmask import TrainedMask, evaluate, inverse

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    correct = lambda out, y: (out.argmax(-1) == y).float()  # noqa: E731
    functions = [Function(f"task{i}", _batches(i, 10 + i), [_task(i, seed=20 + i)], F.cross_entropy, correct)
                 for i in (0, 1)]
    config = CurveConfig((0.1, 0.5), baselines=("random",), random_draws=1, train=True)
    results = run_study(model, functions, tmp_path, steps=30, lr=0.2, progress=False, random_draws=0, curves=config)
    for function in functions:
        methods = results["curves"][function.name]["methods"]
        assert list(methods) == ["mask task0", "mask task1", "trained task0", "trained task1", "random",
                                 "random per tensor"]
        for name in ("task0", "task1"):
            files = [TrainedMask.load(tmp_path / f"masks/{name}@{d:g}.safetensors", model) for d in (0.1, 0.5)]
            assert [f.diagnosis["target_density"] for f in files] == [0.1, 0.5]
            masks = [f.masks for f in files]
            trained = methods[f"trained {name}"]
            assert trained["kept"] == [m.density() for m in masks]
            assert trained["sufficiency"] == [evaluate(model, m, function.eval, correct) for m in masks]
            assert trained["necessity"] == [evaluate(model, inverse(m), function.eval, correct) for m in masks]
    assert "masks:task0@0.1,task0@0.5,task1@0.1,task1@0.5" in results["timings"]  # the density masks in one pass
    assert "trained task0 kept" in (tmp_path / "report.md").read_text()


def test_run_study_refuses_an_evaluation_subset_it_cannot_take(tmp_path):
    """curves.examples is for the built-in studies: run_study says so before any training."""
    functions = [Function("task0", _batches(0, 1), [_task(0)], F.cross_entropy, lambda out, y: out.argmax(-1) == y)]
    with pytest.raises(ValueError, match="curves.examples=100 is read by the built-in studies.*CurveConfig\\(examples=0\\)"):
        run_study(nn.Linear(4, 2), functions, tmp_path, curves=CurveConfig(examples=100), progress=False)
    assert not (tmp_path / "masks").exists()
