import json

import pytest

from modmask import cli
from modmask.experiments.sharing import Config, hidden, points


def test_sizes_and_points():
    assert hidden("small") == (400, 400, 200) and hidden("100-50") == (100, 50)
    with pytest.raises(ValueError, match="neither a name"):
        hidden("tiny")
    assert len(points(Config(sweep="beta"))) == 2 * 26
    assert points(Config(sizes=("small",))) == [{"size": "small", "beta": 1e-4}]


@pytest.mark.parametrize("sweep", ["size", "beta"])
def test_sharing_smoke_end_to_end(tmp_path, sweep):
    assert cli.main(["run", "sharing", "--preset", "smoke", "--set", f"sweep={sweep}", "--out", str(tmp_path),
                     "--quiet"]) == 0
    agg = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    assert len(agg["points"]) == 2 and 0 <= agg["points"][0]["shared_add"]["mean"] <= 1
    assert not any("curves" in p for p in agg["points"])  # off by default: the sweep reads overlaps
    for point in agg["points"]:  # each point's accuracies in both removal modes (addmul's), side by side
        assert list(point["removal_modes"]["modes"]) == ["zero", "mean"] and "¬+" in point["removal_modes"]["modes"]["mean"]
    report = (tmp_path / "report.md").read_text()
    assert "## Accuracy in both removal modes, per point [%]" in report and "| ¬+ |" in report
    if sweep == "size":  # on, through modmask curve: every point's masks ranked, no retraining
        masks = sorted((tmp_path / "seed-0").glob("point-*/masks/*.safetensors"))
        before = [m.stat().st_mtime_ns for m in masks]
        assert cli.main(["curve", str(tmp_path), "--set", "curves.enabled=true", "--quiet"]) == 0
        assert [m.stat().st_mtime_ns for m in masks] == before and len(masks) == 6
        points = json.loads((tmp_path / "results.json").read_text())["aggregate"]["points"]
        assert all(set(p["curves"]) == {"add", "mul"} for p in points)
        assert list(points[1]["curves"]["mul"]["methods"])[:3] == ["mask full", "mask add", "mask mul"]
        report = (tmp_path / "report.md").read_text()
        assert "### Network 32-32, beta 0.0001" in report and "![curves_point1 mul](figures/curves_point1_mul.png)" in report
    figure = "sharing_vs_size.png" if sweep == "size" else "beta_16-16.png"
    assert (tmp_path / "figures" / figure).exists()
    if sweep == "beta":  # both betas reuse one pretrained network
        a, b = sorted((tmp_path / "seed-0").glob("point-*/checkpoints/pretrained.safetensors"))
        assert a.stat().st_ino == b.stat().st_ino


def test_joint_beta_points_give_the_masks_of_points_trained_alone(tmp_path):
    """mask.joint: the beta points of one network in one joint stage, the same masks up to rounding."""
    def run(out, joint):
        args = ["run", "sharing", "--preset", "smoke", "--set", "sweep=beta", "--set", f"execution.joint={joint}", "--set", "mask.lr=0.2",
                "--out", str(out), "--quiet"]
        assert cli.main(args) == 0
        return json.loads((out / "results.json").read_text())["aggregate"]["points"]

    joint, alone = run(tmp_path / "joint", "true"), run(tmp_path / "alone", "false")
    timings = json.loads((tmp_path / "joint/seed-0/timings.json").read_text())
    assert [p for p in timings if p.startswith("masks:")] == [
        "masks:point-0-full,point-0-add,point-0-mul,point-1-full,point-1-add,point-1-mul"]
    for a, b in zip(joint, alone):
        assert a["beta"] == b["beta"]
        assert a["weights_add"]["mean"] == pytest.approx(b["weights_add"]["mean"], abs=2)
        assert a["iou"]["mean"] == pytest.approx(b["iou"]["mean"], abs=0.01)
        assert a["full_accuracy"]["mean"] == pytest.approx(b["full_accuracy"]["mean"], abs=0.5)
    # the two betas made masks of other sizes, each in its own point
    assert joint[0]["weights_add"]["mean"] > 1.2 * joint[1]["weights_add"]["mean"]
