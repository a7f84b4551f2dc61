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
    assert agg["classes"] == CLASSES and len(agg["removal"]) == 10
    assert len(agg["removal"][3]["difference"]) == 10
    assert 0 <= agg["stability_iou"]["mean"] <= 1 and 0 <= agg["stability_iou_chance"]["mean"] <= 1
    assert agg["half_mask"]["layers_late"] == ["convs.3.weight", "convs.3.bias", "output.weight", "output.bias"]
    for name in ("relative_drop.png", "other_over_target.png", "confusion_differences.png"):
        assert (tmp_path / "figures" / name).exists()
    # the class-removed masks keep the reference mask's output layer
    from modmask.core.training import TrainedMask
    masks = TrainedMask.load(tmp_path / "seed-0/masks/without-3.safetensors").logits
    assert "output.weight" not in masks and "convs.0.weight" in masks


def test_balanced_subset_of_class_sorted_labels():
    from modmask.data.sampling import balanced_subset

    labels = torch.arange(10).repeat_interleave(60)  # sorted by class, as an image folder is
    subset = balanced_subset(labels, 205)
    assert torch.bincount(labels[subset]).tolist() == [21] * 5 + [20] * 5
    assert torch.equal(subset, subset.sort().values) and len(set(subset.tolist())) == 205
    assert torch.equal(subset, balanced_subset(labels, 205))  # seeded
    with pytest.raises(ValueError, match="cannot be taken"):
        balanced_subset(labels, 601)


def test_cifar_smoke_on_a_class_sorted_folder_with_fewer_images(image_folder, tmp_path):
    """The first 200 images of a class-sorted folder hold classes 0-3 only (no dog for the
    cat/dog stability pair, no class 9 to remove): the subset must be balanced."""
    assert cli.main(["run", "cifar", "--preset", "smoke", "--out", str(tmp_path), "--quiet",
                     "--set", f"data={image_folder}", "--set", "train_images=200"]) == 0
    agg = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    assert len(agg["removal"]) == 10 and 0 <= agg["stability_iou"]["mean"] <= 1
