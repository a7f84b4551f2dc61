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
    figure = "sharing_vs_size.png" if sweep == "size" else "beta_16-16.png"
    assert (tmp_path / "figures" / figure).exists()
    if sweep == "beta":  # both betas reuse one pretrained network
        a, b = sorted((tmp_path / "seed-0").glob("point-*/checkpoints/pretrained.safetensors"))
        assert a.stat().st_ino == b.stat().st_ino
