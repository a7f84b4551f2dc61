"""The CIFAR-10 class-removal study on a tiny generated image folder, and its metrics by hand."""

import json

import pytest
import torch

from modmask import cli
from modmask.data.cifar import CLASSES
from modmask.experiments.cifar import drops


def test_drops_on_a_hand_built_confusion():
    reference = torch.tensor([[80.0, 20.0, 0.0], [10.0, 90.0, 0.0], [0.0, 0.0, 100.0]])
    removed = torch.tensor([[40.0, 60.0, 0.0], [10.0, 81.0, 9.0], [0.0, 0.0, 100.0]])
    result = drops(reference, removed, 0)
    assert result["target_drop"] == pytest.approx(50.0)  # 80 -> 40: half of class 0 is lost
    # class 1 lost 9 of 90 (10%), which is 20% of class 0's relative drop
    assert result["other_over_target"] == pytest.approx(20.0)
    improved = torch.tensor([[40.0, 60.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    assert drops(reference, improved, 0)["other_over_target"] == 0.0  # others only improved


def test_cifar_smoke_end_to_end(image_folder, tmp_path):
    assert cli.main(["run", "cifar", "--preset", "smoke", "--out", str(tmp_path), "--quiet",
                     "--set", f"data={image_folder}"]) == 0
    agg = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    assert agg["classes"] == CLASSES and [row["class"] for row in agg["removal"]] == CLASSES  # row k removes class k
    assert len(agg["removal"][3]["difference"]) == 10
    assert 0 <= agg["stability_iou"]["mean"] <= 1 and 0 <= agg["stability_iou_chance"]["mean"] <= 1
    assert agg["half_mask"]["layers_late"] == ["convs.3.weight", "convs.3.bias", "output.weight", "output.bias"]
    for name in ("relative_drop.png", "other_over_target.png", "confusion_differences.png"):
        assert (tmp_path / "figures" / name).exists()
    # the class-removed masks keep the reference mask's output layer
    from modmask.core.training import TrainedMask
    masks = TrainedMask.load(tmp_path / "seed-0/masks/without-3.safetensors").logits
    assert "output.weight" not in masks and "convs.0.weight" in masks
    assert all({"random_target_drop", "random_pooled_target_drop"} <= set(row) for row in agg["removal"])
    # the class-removal table in both removal modes: the zero mode is the removal rows' drops as they are
    block = agg["removal_modes"]
    assert block["trained_with"] == "zero" and list(block["modes"]) == ["zero", "mean"]
    drops = ["target_drop", "random_target_drop", "random_pooled_target_drop", "other_over_target"]
    assert block["modes"]["zero"] == {row["class"]: {key: row[key] for key in drops} for row in agg["removal"]}
    assert list(block["modes"]["mean"]) == CLASSES and all(list(v) == drops for v in block["modes"]["mean"].values())
    report = (tmp_path / "report.md").read_text()
    assert "## Class removal in both removal modes [%]" in report
    assert "| condition | relative drop, zero | relative drop, mean | random removal drop, zero |" in report
    _assert_class_curves(tmp_path, image_folder, agg)


def _assert_class_curves(out, image_folder, agg):
    """The first two classes' curves (the smoke preset's default), each ranked by the reference mask
    and that class's mask, on its own evaluation images and on the other classes', in every tensor
    but the output layer, which keeps the reference mask: pinned by hand on the saved masks."""
    from safetensors.torch import load_model

    from modmask import CurveConfig, Masks, TrainedMask, density_curves
    from modmask.config import resolve
    from modmask.data.cifar import load_cifar10
    from modmask.data.sampling import fixed_batches
    from modmask.experiments import cifar

    config = resolve(cifar.Config, cifar.PRESETS, "smoke", {"data": str(image_folder)})
    _, _, eval_set = cifar._data(config, load_cifar10(str(image_folder)))
    model = cifar._model(config, 10, 0)
    load_model(model, str(out / "seed-0/checkpoints/pretrained.safetensors"))
    reference = TrainedMask.load(out / "seed-0/masks/reference.safetensors")
    output = {n: reference.logits[n] for n in cifar.OUTPUT}
    assert set(agg["curves"]) == {"airplane", "airplane-others", "automobile", "automobile-others"}
    correct = lambda out, y: out.argmax(-1) == y  # noqa: E731
    for k, name in enumerate(("airplane", "automobile")):
        without = TrainedMask.load(out / f"seed-0/masks/without-{k}.safetensors").logits
        rankings = {"mask reference": reference.logits, f"mask without-{k}": {**without, **output}}
        for function, own in ((name, True), (f"{name}-others", False)):
            curve = agg["curves"][function]
            assert list(curve["methods"])[:2] == list(rankings) and "random per tensor" in curve["methods"]
            assert "output.weight" not in curve["subset"] and "convs.0.weight" in curve["subset"]
            where = ((eval_set.labels == k) == own).nonzero().squeeze(1)  # the smoke set is below curves.examples
            batches = fixed_batches(cifar.IndexSubset(eval_set, where), 250)
            expected = density_curves(model.eval(), rankings, batches, correct, CurveConfig((0.01, 0.1, 0.5), (),
                                      subset=tuple(curve["subset"])), rest=reference.masks)
            assert curve["full"]["mean"] == pytest.approx(expected["full"]) and expected["full"] > 0, function
            for method, values in expected["methods"].items():
                for side in ("sufficiency", "necessity"):
                    assert [v["mean"] for v in curve["methods"][method][side]] == pytest.approx(values[side]), \
                        (function, method, side)
    report = (out / "report.md").read_text()
    assert "## Curves over density" in report and "| mask without airplane |" in report and "| reference mask |" in report
    assert "![curves automobile-others](figures/curves_automobile-others.png)" in report
    assert "Read as rankings: " in report and "| random pooled removal drop [%] |" in report


def test_balanced_subset_of_class_sorted_labels():
    from modmask.data.sampling import balanced_subset

    labels = torch.arange(10).repeat_interleave(60)  # sorted by class, as an image folder is
    subset = balanced_subset(labels, 205)
    assert torch.bincount(labels[subset]).tolist() == [21] * 5 + [20] * 5
    assert torch.equal(subset, subset.sort().values) and len(set(subset.tolist())) == 205
    assert torch.equal(subset, balanced_subset(labels, 205))  # seeded
    with pytest.raises(ValueError, match="cannot be taken"):
        balanced_subset(labels, 601)


def test_cifar_smoke_on_a_class_sorted_folder_with_fewer_images(image_folder, tmp_path, monkeypatch):
    """The first 200 images of a class-sorted folder hold classes 0-3 only (no dog for the
    cat/dog stability pair, no class 9 to remove): the subset must be balanced."""
    from modmask.data.sampling import balanced_subset
    from modmask.experiments import cifar as experiment

    seen = {}
    real_data = experiment._data

    def spy(config, cifar):  # the run's images before and after taking its subset
        seen["folder"], seen["used"] = cifar["train"], real_data(config, cifar)
        return seen["used"]

    monkeypatch.setattr(experiment, "_data", spy)
    assert cli.main(["run", "cifar", "--preset", "smoke", "--out", str(tmp_path), "--quiet",
                     "--set", f"data={image_folder}", "--set", "train_images=200"]) == 0
    images, labels = seen["folder"]
    assert torch.equal(labels, torch.arange(10).repeat_interleave(60))  # class-sorted: the first 200 are classes 0-3
    data, train_idx, valid = seen["used"]
    assert torch.bincount(data.labels, minlength=10).tolist() == [20] * 10  # every class, in equal parts
    chosen = balanced_subset(labels, 200)  # the exact examples: these images of the folder, in this order
    assert torch.equal(data.labels, labels[chosen]) and torch.equal(data.images, images[chosen])
    assert all(chosen[labels[chosen] == c].max() >= 60 * c + 20 for c in range(10))  # sampled, not each class's first 20
    agg = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    # every class is in the evaluation split (a row of the confusion in % sums to 100, or 0 for a missing class)
    evaluated = valid.labels
    assert sorted(evaluated.unique().tolist()) == list(range(10))
    assert [round(sum(row["mean"] for row in rows)) for rows in agg["reference_confusion"]] == [100] * 10
    # the cat/dog stability masks trained on both classes of the pair
    assert agg["stability_classes"] == ["cat", "dog"] and (data.labels[train_idx] == 5).sum() > 0
    assert [r["class"] for r in agg["removal"]] == CLASSES
