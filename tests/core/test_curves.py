"""Curves over density (core/curves.py) on models whose answers are known by hand."""

import math

import pytest
import torch
from torch import nn

from modmask import Masks
from modmask.core import curves as curves_module
from modmask.core.baselines import importance
from modmask.core.curves import CurveConfig, density_curves, normalised_area

DENSITIES = (0.1, 0.25, 0.5)  # of 20 weights: 2, 5 and 10


def _carrier_net() -> nn.Sequential:
    """out = W1 W0 x. The function (the sign of x0) runs through two weights of 0.5, W0[0,0] and
    W1[0,0]; three larger weights of W0 (3.0) lead to hidden units the output does not read."""
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.diag(torch.tensor([0.5, 3.0, 3.0, 3.0])))
        net[1].weight.zero_()
        net[1].weight[0, 0] = 0.5
    return net


def _sign_data():
    """x0 = +-1, half each (the empty model, output 0, is right on exactly half), noise elsewhere."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.tensor([1.0, -1.0]).repeat(32)
    return [(x, x[:, 0] > 0)]


def _correct(out, positive):
    return ((out[:, 0] > 0) == positive).float()


def _carrier_logits():
    """The right ranking: the two carrier weights first."""
    first, second = torch.full((4, 4), -1.0), torch.full((1, 4), -1.0)
    first[0, 0], second[0, 0] = 5.0, 5.0
    return {"0.weight": first, "1.weight": second}


def test_the_right_ranking_carries_the_function_from_the_smallest_density_and_magnitude_does_not():
    net = _carrier_net()
    rankings = {"mask": _carrier_logits(), "magnitude": importance(net, "magnitude", ["0.weight", "1.weight"])}
    result = density_curves(net, rankings, _sign_data(), _correct, CurveConfig(DENSITIES, baselines=()))
    assert result["densities"] == list(DENSITIES) and result["subset"] == ["0.weight", "1.weight"]
    assert (result["full"], result["empty"]) == (1.0, 0.5)
    mask, magnitude = result["methods"]["mask"], result["methods"]["magnitude"]
    # 2 weights: the carriers; removing them leaves the empty model's half
    assert mask["sufficiency"] == [1.0, 1.0, 1.0] and mask["necessity"] == [0.5, 0.5, 0.5]
    # magnitude's top 2 are two of the 3.0s (nothing of the function); its top 5 add both carriers (ties by position)
    assert magnitude["sufficiency"] == [0.5, 1.0, 1.0] and magnitude["necessity"] == [1.0, 0.5, 0.5]
    assert mask["sufficiency_area"] == pytest.approx(1.0) and mask["necessity_area"] == pytest.approx(1.0)
    # by hand: normalised [0, 1, 1] over log10 densities 0.1, 0.25, 0.5 (trapezoids / the axis' length)
    by_hand = (0.5 * math.log10(2.5) + 1.0 * math.log10(2)) / math.log10(5)
    assert magnitude["sufficiency_area"] == pytest.approx(by_hand)
    assert magnitude["necessity_area"] == pytest.approx(by_hand)
    assert set(result["methods"]) == {"mask", "magnitude"} and "note" not in result


def test_normalised_area_by_hand_and_when_full_equals_empty():
    assert normalised_area([0.01, 0.1], [0.5, 1.0], 1.0, 0.0, "sufficiency") == pytest.approx(0.75)
    assert normalised_area([0.01, 0.1], [0.5, 1.0], 1.0, 0.0, "necessity") == pytest.approx(0.25)
    # equal steps in log10: 0.01 -> 0.1 -> 1.0 are each half the axis
    assert normalised_area([0.01, 0.1, 1.0], [0.0, 0.0, 1.0], 1.0, 0.0, "sufficiency") == pytest.approx(0.25)
    assert normalised_area([0.01, 0.1], [0.5, 0.5], 0.5, 0.5, "sufficiency") is None


class Counter(nn.Module):
    """Outputs, for every example, the sums of two all-ones tensors: how many weights of each a
    mask keeps. A (100 weights) is large, B (10) small."""

    def __init__(self):
        super().__init__()
        self.A, self.B = nn.Parameter(torch.ones(10, 10)), nn.Parameter(torch.ones(2, 5))

    def forward(self, x):
        return torch.stack([self.A.sum(), self.B.sum()]).expand(len(x), 2)


def _b_kept(out, _):
    return out[:, 1] / 10


def _all_kept(out, _):
    return out.sum(1) / 110


BATCHES = [(torch.zeros(3, 1), None)]


def test_random_pooled_draws_from_all_tensors_and_per_tensor_from_each():
    model = Counter()
    config = CurveConfig((0.05, 0.2, 0.5), baselines=("random",), random_draws=4)
    small = density_curves(model, {}, BATCHES, _b_kept, config, names=["A", "B"])
    pooled, per_tensor = small["methods"]["random"], small["methods"]["random per tensor"]
    # per tensor: round(d * 10) of B's weights in every draw, so no spread
    assert per_tensor["sufficiency"] == pytest.approx([0.1, 0.2, 0.5])
    assert per_tensor["necessity"] == pytest.approx([0.9, 0.8, 0.5])
    assert per_tensor["sufficiency_std"] == [0.0, 0.0, 0.0]
    # pooled: B gets whatever the draw gives it, differing between draws
    assert any(s > 0 for s in pooled["sufficiency_std"])
    assert small["random_draws"] == 4
    # pooled keeps round(d * 110) of all weights; per tensor round(d * 100) + round(d * 10)
    both = density_curves(model, {}, BATCHES, _all_kept, config, names=["A", "B"])
    assert both["methods"]["random"]["sufficiency"] == pytest.approx([6 / 110, 22 / 110, 55 / 110])
    assert both["methods"]["random per tensor"]["sufficiency"] == pytest.approx([6 / 110, 22 / 110, 55 / 110])
    assert both["methods"]["random"]["sufficiency_std"] == [0.0, 0.0, 0.0]


def test_one_draw_has_no_spread_and_the_seed_chooses_the_draws():
    config = CurveConfig((0.05, 0.2), baselines=("random",), random_draws=1)
    runs = [density_curves(Counter(), {}, BATCHES, _b_kept, config, names=["A", "B"], seed=seed)["methods"]["random"]
            for seed in (0, 0, 1, 2, 3)]
    assert "sufficiency_std" not in runs[0] and set(runs[0]) == {"sufficiency", "necessity", "sufficiency_area",
                                                                 "necessity_area"}
    assert runs[0] == runs[1] and any(r["sufficiency"] != runs[0]["sufficiency"] for r in runs[2:])


def test_trained_masks_per_density_are_read_as_they_are():
    model = Counter()
    config = CurveConfig((0.1, 0.5), baselines=())
    masks = {0.1: Masks({"A": torch.ones(10, 10, dtype=torch.bool), "B": torch.eye(2, 5, dtype=torch.bool)}),
             0.5: Masks({"A": torch.zeros(10, 10, dtype=torch.bool), "B": torch.ones(2, 5, dtype=torch.bool)})}
    result = density_curves(model, {}, BATCHES, _b_kept, config, trained={"at d": masks})
    assert result["methods"]["at d"]["sufficiency"] == pytest.approx([0.2, 1.0])
    assert result["methods"]["at d"]["necessity"] == pytest.approx([0.8, 0.0])
    assert result["methods"]["at d"]["kept"] == pytest.approx([102 / 110, 10 / 110])  # as trained, not as asked
    with pytest.raises(ValueError, match=r"trained masks 'at d' have none at density \[0.5\]"):
        density_curves(model, {}, BATCHES, _b_kept, config, trained={"at d": {0.1: masks[0.1]}})


def test_a_subset_selects_only_there_and_the_rest_mask_holds_the_others():
    model = Counter()
    scores = {"A": torch.rand(10, 10), "B": torch.rand(2, 5)}
    config = CurveConfig((0.1, 0.5), baselines=(), subset=("B",))
    # the top d of B's 10 weights, whatever A's scores; A at its full weights (rest None)
    result = density_curves(model, {"s": scores}, BATCHES, _all_kept, config)
    assert result["subset"] == ["B"]
    assert result["methods"]["s"]["sufficiency"] == pytest.approx([101 / 110, 105 / 110])
    assert result["methods"]["s"]["necessity"] == pytest.approx([109 / 110, 105 / 110])
    assert (result["full"], result["empty"]) == (pytest.approx(1.0), pytest.approx(100 / 110))
    # the rest mask keeps a third of A (here 33 of its weights) under every condition
    rest = Masks({"A": torch.arange(100).view(10, 10) < 33, "B": torch.zeros(2, 5, dtype=torch.bool)})
    result = density_curves(model, {"s": scores}, BATCHES, _all_kept, config, rest=rest)
    assert result["methods"]["s"]["sufficiency"] == pytest.approx([34 / 110, 38 / 110])
    assert (result["full"], result["empty"]) == (pytest.approx(43 / 110), pytest.approx(33 / 110))
    # glob patterns select too
    assert density_curves(model, {"s": scores}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), (), subset=("B*",))
                          )["subset"] == ["B"]


def test_a_function_that_does_not_need_the_subset_has_no_areas_and_a_note():
    net = _carrier_net()
    config = CurveConfig((0.25, 0.5), baselines=(), subset=("1.*",))  # of the output layer's 4 weights: 1 and 2
    without_carrier = Masks({"0.weight": torch.eye(4, dtype=torch.bool) & (torch.arange(4) > 0)})
    result = density_curves(net, {"mask": _carrier_logits()}, _sign_data(), _correct, config, rest=without_carrier)
    assert result["full"] == result["empty"] == 0.5
    assert result["methods"]["mask"]["sufficiency_area"] is None and "undefined" in result["note"]
    # with the carrier in the rest mask, the output layer's carrier alone carries the function
    with_carrier = Masks({"0.weight": torch.eye(4, dtype=torch.bool)})
    result = density_curves(net, {"mask": _carrier_logits()}, _sign_data(), _correct, config, rest=with_carrier)
    assert result["methods"]["mask"]["sufficiency"] == [1.0, 1.0] and result["full"] == 1.0


@pytest.mark.parametrize("settings, message", [
    (dict(baselines=("magnitude", "snip")), r"unknown baseline\(s\) \['snip'\]; baselines: magnitude, wanda"),
    (dict(densities=(0.1, 0.05)), "strictly increasing"),
    (dict(densities=(0.1, 1.0)), r"fractions in \(0, 1\)"),
    (dict(densities=(0.1,)), "at least two"),
    (dict(random_draws=0), "random_draws must be at least 1"),
    (dict(examples=-1), r"examples must be 0 \(all evaluation examples\) or a positive count \(got -1\)"),
    (dict(functions=()), "functions must name at least one function or pattern, or be None"),
])
def test_bad_settings_are_refused_when_made(settings, message):
    with pytest.raises(ValueError, match=message):
        CurveConfig(**settings)


def test_bad_inputs_are_refused_before_any_evaluation(monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before checking the inputs")

    monkeypatch.setattr(curves_module, "evaluate", no_evaluation)
    model, scores = Counter(), {"A": torch.rand(10, 10), "B": torch.rand(2, 5)}
    with pytest.raises(ValueError, match=r"\['C\*'\] match\(es\) none of the masked tensors \['A', 'B'\]"):
        density_curves(model, {"s": scores}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), (), subset=("B", "C*")))
    with pytest.raises(ValueError, match="rest mask has no mask for \\['A'\\]"):
        density_curves(model, {"s": scores}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), (), subset=("B",)),
                       rest=Masks({"B": torch.ones(2, 5, dtype=torch.bool)}))
    with pytest.raises(ValueError, match="not an iterator"):
        density_curves(model, {"s": scores}, iter(BATCHES), _b_kept, CurveConfig((0.1, 0.5), ()))
    with pytest.raises(ValueError, match="tensor 'B' is in the masked tensors but not in ranking 'other'"):
        density_curves(model, {"s": scores, "other": {"A": scores["A"]}}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), ()))
    with pytest.raises(ValueError, match="does not fit the model"):
        density_curves(model, {"s": {"A": torch.rand(3, 3)}}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), ()))
    with pytest.raises(ValueError, match="needs the masked tensors"):
        density_curves(model, {}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), ("random",)))
    with pytest.raises(ValueError, match=r"names \['C'\] are not parameters"):
        density_curves(model, {}, BATCHES, _b_kept, CurveConfig((0.1, 0.5), ("random",)), names=["A", "C"])


def test_the_config_takes_lists_and_one_pattern_as_config_json_and_python_give_them():
    config = CurveConfig([0.1, 0.2], ["random"], subset="net.*")
    assert config.densities == (0.1, 0.2) and config.baselines == ("random",) and config.subset == ("net.*",)


def test_curves_removal_mean_reads_every_point_under_mean_removal():
    """curves.removal="mean": every point is the evaluation under mean removal (the means read once on
    the curve's batches). On y = W1 relu(W0 x + b0) + b1 with inputs of non-zero mean and the output
    itself as the metric, removing every weight keeps the full model's mean output (mean removal keeps
    the means later layers see), while zero removal leaves the bias b1; the points differ."""
    from modmask import evaluate, top_masks

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)) + 2.0
    batches, metric = [(x, None)], lambda out, _: out[:, 0]
    scores = {n: p.detach().abs() for n, p in net.named_parameters() if n.endswith("weight")}
    settings = dict(densities=(0.25, 0.5), baselines=())
    zero = density_curves(net, {"magnitude": scores}, batches, metric, CurveConfig(**settings))
    mean = density_curves(net, {"magnitude": scores}, batches, metric, CurveConfig(**settings, removal="mean"))
    assert zero["removal"] == "zero" and mean["removal"] == "mean"
    assert mean["full"] == pytest.approx(zero["full"])  # every weight kept: nothing removed
    assert mean["empty"] == pytest.approx(net(x).mean().item(), abs=1e-5)
    assert zero["empty"] == pytest.approx(net[2].bias.item(), abs=1e-6)
    half = top_masks(scores, 0.5)
    assert mean["methods"]["magnitude"]["sufficiency"][1] == pytest.approx(
        evaluate(net, half, batches, metric, removal="mean"))
    assert mean["methods"]["magnitude"]["necessity"] != pytest.approx(zero["methods"]["magnitude"]["necessity"])
    with pytest.raises(ValueError, match="curves.removal"):
        CurveConfig(removal="median")
