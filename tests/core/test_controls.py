"""Chance levels of overlap, random controls, seed summaries and masks at a chosen density (issue 18)."""

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from modmask import (Masks, TrainedMask, evaluate, inverse, iomin, iou, mean_std_text, overlap_chance,
                     overlap_matrix, overlap_table, random_control, random_masks, shared_fraction,
                     shared_fraction_chance, stability, summarize)
from modmask.core import chance


def _m(**rows):
    return Masks({n: torch.tensor(v, dtype=torch.bool) for n, v in rows.items()})


# w: 2 and 2 of 4 weights, intersection 2; v: 1 and 2 of 3 weights, intersection 1
A = _m(w=[1, 1, 0, 0], v=[1, 0, 0])
B = _m(w=[1, 1, 0, 0], v=[1, 1, 0])


def test_chance_per_layer_by_hand():
    levels = overlap_chance(A, B)["per_layer"]
    w, v = levels["w"], levels["v"]
    # w: X in {0, 1, 2} with P = 1/6, 4/6, 1/6; IoU = X / (4 - X)
    assert w["intersection_chance"] == 1.0 and w["intersection_std"] == pytest.approx(math.sqrt(1 / 3))
    assert w["iou_chance"] == pytest.approx(4 / 6 * 1 / 3 + 1 / 6 * 1)  # 7/18
    assert w["iomin_chance"] == 0.5 and w["shared_a_chance"] == 0.5
    assert w["p"] == pytest.approx(1 / 6) and w["z"] == pytest.approx(1 / math.sqrt(1 / 3))
    assert w["ratio"] == 2.0 and w["iou_ratio"] == pytest.approx(1 / (7 / 18))
    # v: X in {0, 1} with P(1) = 2/3; IoU = X / (3 - X)
    assert v["iou_chance"] == pytest.approx(2 / 3 * 1 / 2)
    assert v["iomin_chance"] == pytest.approx(2 / 3) and v["shared_b_chance"] == pytest.approx(1 / 3)
    assert v["p"] == pytest.approx(2 / 3) and v["method"] == "exact"


def test_chance_pooled_by_hand():
    total = overlap_chance(A, B)["total"]
    # T = X_w + X_v: P(T = 0..3) = 1/18, 6/18, 9/18, 2/18; pooled IoU = T / (3 + 4 - T)
    pmf = [Fraction(1, 18), Fraction(6, 18), Fraction(9, 18), Fraction(2, 18)]
    expected = sum(p * Fraction(t, 7 - t) for t, p in enumerate(pmf))
    assert total["method"] == "exact"
    assert total["iou_chance"] == pytest.approx(float(expected))
    assert total["intersection"] == 3 and total["intersection_chance"] == pytest.approx(1 + 2 / 3)
    assert total["iou"] == iou(A, B) and total["iomin"] == iomin(A, B)
    assert total["iomin_chance"] == pytest.approx((1 + 2 / 3) / 3)
    assert total["p"] == pytest.approx(2 / 18)
    assert total["intersection_std"] == pytest.approx(math.sqrt(1 / 3 + 2 / 9))


@pytest.mark.parametrize("n,ka,kb", [(100, 10, 20), (1000, 5, 3), (5000, 2500, 2500), (10_000, 9999, 5000),
                                     (20_000, 1, 1)])
def test_window_matches_the_whole_support(n, ka, kb):
    low, high = max(0, ka + kb - n), min(ka, kb)
    x = torch.arange(low, high + 1, dtype=torch.float64)
    pmf = chance.log_pmf(n, ka, kb, x).exp()
    pmf = pmf / pmf.sum()
    exact_iou = float((pmf * x / (ka + kb - x)).sum())
    level = chance.layer_chance(n, ka, kb, 0)
    assert level["iou_chance"] == pytest.approx(exact_iou, rel=1e-9)
    observed = int(round(ka * kb / n)) + 2
    assert chance.upper_tail(n, ka, kb, observed) == pytest.approx(float(pmf[observed - low:].sum()), rel=1e-6)


def test_huge_tensor_needs_no_mask_and_matches_the_first_order_value():
    n, ka, kb = 10**8, 10**7, 2 * 10**7
    level = chance.layer_chance(n, ka, kb, 2_000_000 + 2_400)
    mean = ka * kb / n
    assert level["intersection_chance"] == mean
    assert level["iou_chance"] == pytest.approx(mean / (ka + kb - mean), rel=1e-6)
    assert level["z"] == pytest.approx(2.0, rel=1e-6)
    # one-sided p of z = 2 is close to the normal tail 0.0228
    assert level["p"] == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2)), rel=0.05)
    assert chance.upper_tail(n, ka, kb, 2_100_000) < 1e-15  # 83 std above: still resolved, not 1 - 1


def _prefix_masks(sizes, counts):
    """Two masks keeping the first counts[n][0] (a) and counts[n][1] (b) weights of each tensor."""
    return tuple(Masks({n: torch.arange(sizes[n]) < counts[n][which] for n in sizes}) for which in (0, 1))


def test_chance_matches_sampled_random_masks():
    sizes = {"w": 60, "v": 25, "u": 7}
    counts = {"w": (12, 30), "v": (5, 3), "u": (7, 2)}
    a, b = _prefix_masks(sizes, counts)
    levels = overlap_chance(a, b)
    g = torch.Generator().manual_seed(0)
    draws = 3000
    samples = {"total": [], **{n: [] for n in sizes}}
    iomins = []
    for _ in range(draws):
        x, y = random_masks(a, g), random_masks(b, g)
        samples["total"].append(iou(x, y))
        iomins.append(iomin(x, y))
        for n, value in iou(x, y, per_layer=True).items():
            samples[n].append(value)
    for key, values in samples.items():
        level = levels["total"] if key == "total" else levels["per_layer"][key]
        mean = sum(values) / draws
        se = (sum((v - mean) ** 2 for v in values) / (draws - 1) / draws) ** 0.5
        assert abs(mean - level["iou_chance"]) < 4 * se + 1e-12, (key, mean, level["iou_chance"])
    assert sum(iomins) / draws == pytest.approx(levels["total"]["iomin_chance"], rel=0.03)


def test_normal_approximation_agrees_with_the_exact_convolution(monkeypatch):
    sizes = {"w": 3000, "v": 2000, "u": 1000}
    counts = {"w": (300, 900), "v": (200, 100), "u": (500, 500)}
    a, b = _prefix_masks(sizes, counts)
    exact = overlap_chance(a, b)["total"]
    monkeypatch.setattr(chance, "EXACT_WORK", 0)
    normal = overlap_chance(a, b)["total"]
    assert exact["method"] == "exact" and normal["method"] == "normal"
    assert normal["iou_chance"] == pytest.approx(exact["iou_chance"], rel=1e-4)
    assert normal["intersection_chance"] == exact["intersection_chance"]
    # a and b overlap completely on their first weights, far above chance: both p are tiny
    assert exact["p"] < 1e-10 and normal["p"] < 1e-10


def test_observed_at_chance_gives_ratio_one_and_p_about_a_half():
    level = chance.layer_chance(10_000, 1000, 1000, 100)
    assert level["ratio"] == 1.0 and level["z"] == 0.0
    assert 0.45 < level["p"] < 0.6  # P(X >= mean) of a discrete, nearly symmetric distribution


def test_degenerate_counts():
    empty, full = _m(w=[0, 0, 0]), _m(w=[1, 1, 1])
    level = overlap_chance(empty, full)["total"]
    assert level["iou_chance"] == 0.0 and level["iou_ratio"] is None and level["ratio"] is None
    assert level["p"] == 1.0 and level["z"] == 0.0
    both = overlap_chance(full, full)["total"]  # forced: a full mask always overlaps completely
    assert both["iou_chance"] == 1.0 and both["z"] == 0.0 and both["p"] == 1.0


def test_overlap_table_with_chance_columns():
    rows = overlap_table(A, B, ("add", "mul"), chance=True)
    levels = overlap_chance(A, B)
    assert rows[0]["iou_chance"] == levels["per_layer"]["w"]["iou_chance"]
    assert rows[-1]["tensor"] == "total" and rows[-1]["iou_chance"] == levels["total"]["iou_chance"]
    assert rows[1]["shared_mul_chance"] == levels["per_layer"]["v"]["shared_b_chance"]
    assert {"iou_ratio", "iomin_chance", "shared_add_chance", "z", "p", "intersection_chance"} <= set(rows[0])
    assert "iou_chance" not in overlap_table(A, B)[0]  # unchanged without chance


def test_masks_of_different_models_are_refused_with_names():
    other_shape = _m(w=[1, 0, 0, 0, 0], v=[1, 0, 0])
    other_names = _m(w=[1, 0, 0, 0], x=[1, 0, 0])
    with pytest.raises(ValueError, match=r"'add'.*'mul'.*tensor 'w' has shape \(4,\)"):
        overlap_chance(A, other_shape, ("add", "mul"))
    with pytest.raises(ValueError, match=r"tensor 'v' is in masks 'A'"):
        overlap_matrix({"A": A, "B": B, "C": other_names})
    with pytest.raises(ValueError, match="at least two"):
        overlap_matrix({"A": A})


def test_overlap_matrix():
    c = _m(w=[0, 0, 1, 1], v=[0, 0, 1])
    result = overlap_matrix({"A": A, "B": B, "C": c}, per_layer=True)
    assert result["labels"] == ["A", "B", "C"]
    assert result["iou"][0][1] == result["iou"][1][0] == iou(A, B)
    assert result["iou"][0][2] == 0.0 and result["iou"][2][2] == 1.0
    assert result["iomin"][1][2] == iomin(B, c)
    assert result["iou_chance"][0][1] == overlap_chance(A, B)["total"]["iou_chance"]
    assert [(r["a"], r["b"]) for r in result["pairs"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert result["pairs"][0]["iou_chance"] == result["iou_chance"][0][1]
    assert result["per_layer"]["v"]["iou"][0][1] == iou(A, B, per_layer=True)["v"]
    assert result["per_layer"]["w"]["iou_chance"][0][1] == pytest.approx(7 / 18)


def test_shared_fraction_chance_by_hand_and_sampled():
    masks = {"a": _m(w=[1, 1, 1, 0]), "b": _m(w=[1, 1, 0, 0]), "c": _m(w=[1, 0, 0, 0])}
    assert shared_fraction_chance(masks, "a", per_layer=True) == {"w": pytest.approx(1 - (1 - 2 / 4) * (1 - 1 / 4))}
    g = torch.Generator().manual_seed(1)
    sampled = [shared_fraction({k: random_masks(m, g) for k, m in masks.items()}, "a") for _ in range(4000)]
    assert sum(sampled) / len(sampled) == pytest.approx(shared_fraction_chance(masks, "a"), abs=0.01)


def test_stability_reports_its_chance_level():
    result = stability([A, B, B])
    pairs = [(A, B), (A, B), (B, B)]
    assert result["chance"] == pytest.approx(sum(overlap_chance(x, y)["total"]["iou_chance"] for x, y in pairs) / 3)
    assert result["mean"] > result["chance"]


def test_random_masks_keep_counts_and_are_seeded():
    masks = Masks({"w": torch.rand(8, 9) < 0.3, "v": torch.rand(5) < 0.5})
    drawn = random_masks(masks, 3)
    assert drawn.counts() == masks.counts() and {n: t.shape for n, t in drawn.items()} == {n: t.shape for n, t in masks.items()}
    assert drawn == random_masks(masks, 3) and drawn != random_masks(masks, 4)
    g = torch.Generator().manual_seed(0)
    frequency = sum(random_masks(masks, g)["w"].float() for _ in range(2000)) / 2000
    assert (frequency - masks.densities()["w"]).abs().max() < 0.06  # every position equally likely


def test_random_masks_within_a_mask():
    within = _m(w=[1, 1, 1, 0, 0, 0])
    drawn = random_masks(_m(w=[0, 0, 0, 1, 1, 0]), 0, within)
    assert drawn.count() == 2 and not (drawn - within).count()
    with pytest.raises(ValueError, match="'w'.*keeps 4.*only 3"):
        random_masks(_m(w=[1, 1, 1, 1, 0, 0]), 0, within)
    with pytest.raises(ValueError, match="tensor 'v'"):
        random_masks(_m(w=[1, 0, 0, 0, 0, 0], v=[1]), 0, within)


def test_pooled_random_masks_keep_the_total_and_spread_it_over_the_tensors():
    """match="pooled": the 2 kept weights of w (none of v) drawn among all 8 weights: the total is
    exact in every draw, the per-tensor counts vary (w's is hypergeometric, 0/1/2 with 6/16/6 of 28)
    and every position is equally likely (2/8)."""
    masks = _m(w=[1, 1, 0, 0], v=[0, 0, 0, 0])
    g = torch.Generator().manual_seed(0)
    draws = [random_masks(masks, g, match="pooled") for _ in range(4000)]
    assert all(d.count() == 2 for d in draws)
    in_w = torch.tensor([d.counts()["w"] for d in draws])
    assert [(in_w == c).float().mean().item() for c in (0, 1, 2)] == pytest.approx([6 / 28, 16 / 28, 6 / 28], abs=0.03)
    frequency = torch.cat([torch.cat([d["w"], d["v"]]).float()[None] for d in draws]).mean(0)
    assert (frequency - 0.25).abs().max() < 0.03
    assert random_masks(masks, 5, match="pooled") == random_masks(masks, 5, match="pooled")  # seeded
    assert random_masks(masks, 5) == random_masks(masks, 5, match="tensor")  # the default matches per tensor
    assert all(random_masks(masks, s).counts() == {"w": 2, "v": 0} for s in range(20))
    with pytest.raises(ValueError, match="match must be 'tensor'.*or 'pooled'"):
        random_masks(masks, 0, match="total")


def test_pooled_random_masks_within_a_mask():
    within = _m(w=[1, 0, 1, 0], v=[0, 1, 0, 0])  # 3 positions in all, 2 of them in w
    g = torch.Generator().manual_seed(1)
    draws = [random_masks(_m(w=[0, 0, 0, 0], v=[1, 1, 0, 0]), g, within, match="pooled") for _ in range(300)]
    assert all(d.count() == 2 and not (d - within).count() for d in draws)
    assert {d.counts()["w"] for d in draws} == {1, 2}  # w holds 0 of the mask's weights, yet 1 or 2 are drawn there
    with pytest.raises(ValueError, match="keeps 4 weights but `within` keeps only 3 in its tensors"):
        random_masks(_m(w=[1, 1, 1, 1], v=[0, 0, 0, 0]), 0, within, match="pooled")


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(32, 4)
    batches = [(x[:16], torch.zeros(16)), (x[16:], torch.zeros(16))]
    metric = lambda outputs, targets: outputs.sum(1)  # changes with every weight: draws differ
    masks = Masks({"0.weight": torch.rand(6, 4) < 0.4, "2.weight": torch.rand(2, 6) < 0.5})
    return model, batches, metric, masks


def test_random_removal_evaluates_the_inverse_of_seeded_draws():
    model, batches, metric, masks = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = random_control(model, masks, batches, metric, draws=4, seed=7)
    g = torch.Generator().manual_seed(7)
    expected = [evaluate(model, inverse(random_masks(masks, g)), batches, metric) for _ in range(4)]
    assert result["values"] == pytest.approx(expected) and result["draws"] == 4
    assert result["mean"] == pytest.approx(sum(expected) / 4)
    assert result["std"] == pytest.approx(torch.tensor(expected).std().item())
    assert len(set(result["values"])) == 4
    assert random_control(model, masks, batches, metric, draws=2, seed=7)["values"] == result["values"][:2]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_random_keep_and_full_on_io_layers():
    model, batches, metric, masks = _model_and_data()
    kept = random_control(model, masks, batches, metric, draws=3, seed=1, keep=True)
    g = torch.Generator().manual_seed(1)
    assert kept["values"] == pytest.approx([evaluate(model, random_masks(masks, g), batches, metric) for _ in range(3)])
    full = Masks({n: torch.rand(m.shape) < 0.8 for n, m in masks.items()})
    removed = random_control(model, masks, batches, metric, draws=3, seed=1, full=full, keep_full_on=["2.weight"])
    g = torch.Generator().manual_seed(1)
    expected = []
    for _ in range(3):
        drawn = random_masks(masks, g)
        expected.append(evaluate(model, Masks({"0.weight": ~drawn["0.weight"], "2.weight": full["2.weight"]}),
                                 batches, metric))
    assert removed["values"] == pytest.approx(expected)


def test_pooled_random_removal_draws_the_total_over_the_removed_tensors():
    model, batches, metric, masks = _model_and_data()
    pooled = random_control(model, masks, batches, metric, draws=3, seed=2, match="pooled")
    g = torch.Generator().manual_seed(2)
    expected = [evaluate(model, inverse(random_masks(masks, g, match="pooled")), batches, metric) for _ in range(3)]
    assert pooled["values"] == pytest.approx(expected) and pooled["match"] == "pooled"
    assert pooled["values"] != random_control(model, masks, batches, metric, draws=3, seed=2)["values"]
    # with the Full mask kept on 2.weight (as the inverse keeps it), the draws pool over 0.weight alone
    full = Masks({n: torch.ones(m.shape, dtype=torch.bool) for n, m in masks.items()})
    io = random_control(model, masks, batches, metric, draws=3, seed=2, full=full, keep_full_on=["2.weight"],
                        match="pooled")
    g = torch.Generator().manual_seed(2)
    expected = []
    for _ in range(3):
        drawn = random_masks(masks.only(["0.weight"]), g, match="pooled")
        assert drawn.count() == masks.counts()["0.weight"]
        expected.append(evaluate(model, Masks({"0.weight": ~drawn["0.weight"], "2.weight": full["2.weight"]}),
                                 batches, metric))
    assert io["values"] == pytest.approx(expected)


def test_random_control_bad_input():
    model, batches, metric, masks = _model_and_data()
    with pytest.raises(ValueError, match="draws must be at least 1"):
        random_control(model, masks, batches, metric, draws=0)
    with pytest.raises(ValueError, match="not an iterator"):
        random_control(model, masks, iter(batches), metric)
    with pytest.raises(ValueError, match="keep_full_on applies to random removal"):
        random_control(model, masks, batches, metric, keep=True, full=masks, keep_full_on=["2.weight"])
    single = random_control(model, masks, batches, metric, draws=1)
    assert single["std"] is None and len(single["values"]) == 1


def test_summarize_and_mean_std_text():
    assert summarize([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert mean_std_text([97.26]) == "97.3 (n=1)"
    assert mean_std_text([97.26], digits=2) == "97.26 (n=1)"
    summary = summarize([1.0, 2.0, 3.0])
    assert summary == {"mean": 2.0, "std": 1.0, "n": 3}  # sample std
    assert mean_std_text(summary, digits=2) == "2.00 ± 1.00 (n=3)"
    assert mean_std_text([1, 2, 3]) == "2.0 ± 1.0 (n=3)"
    with pytest.raises(ValueError, match="at least one value"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def test_at_density_pooled_and_per_layer():
    trained = TrainedMask({"w": torch.tensor([[3.0, -1.0], [0.5, -2.0]]), "v": torch.tensor([1.0, -0.5, -3.0, 2.0])})
    assert trained.at_density(0.5) == Masks({"w": torch.tensor([[True, False], [True, False]]),
                                             "v": torch.tensor([True, False, False, True])})
    pooled = trained.at_density(0.25)  # 2 of 8 weights: logits 3.0 and 2.0
    assert pooled.counts() == {"w": 1, "v": 1} and pooled["w"][0, 0] and pooled["v"][3]
    per_layer = trained.at_density(0.25, per_layer=True)  # 1 of 4 in each tensor
    assert per_layer.counts() == {"w": 1, "v": 1} and per_layer["w"][0, 0] and per_layer["v"][3]
    assert trained.at_density(0.75, per_layer=True).counts() == {"w": 3, "v": 3}
    assert trained.at_density(1.0).count() == 8  # negative logits too: a chosen size, not a sign
    assert trained.at_density(0.5) == trained.masks  # here exactly the positive logits


def test_at_density_breaks_ties_by_position_and_refuses_bad_densities():
    trained = TrainedMask({"w": torch.zeros(2, 3), "v": torch.zeros(4)})
    pooled = trained.at_density(0.7)  # 7 of 10 tied logits: the first seven positions
    assert pooled["w"].all() and pooled["v"].tolist() == [True, False, False, False]
    assert trained.at_density(0.5, per_layer=True)["v"].tolist() == [True, True, False, False]
    assert pooled == trained.at_density(0.7)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
            trained.at_density(bad)


def test_a_ladder_of_densities_is_top_masks_at_each_from_one_sort():
    from modmask.core.masks import top_masks, top_masks_ladder

    scores = {"w": torch.randn(7, 5, generator=torch.Generator().manual_seed(0)), "v": torch.zeros(9)}  # ties too
    densities = [0.05, 0.2, 0.5, 1.0]
    for per_tensor in (False, True):
        ladder = top_masks_ladder(scores, densities, per_tensor)
        assert ladder == [top_masks(scores, d, per_tensor) for d in densities]
        assert all(((small & ~large).count() == 0) for small, large in zip(ladder, ladder[1:]))  # nested
    assert [m.count() for m in top_masks_ladder(scores, densities)] == [2, 9, 22, 44]
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        top_masks_ladder(scores, [0.1, 1.5])


@pytest.mark.parametrize("exact_work", [chance.EXACT_WORK, 0])
def test_p_values_are_calibrated_under_chance(monkeypatch, exact_work):
    """For independent random masks, p < alpha happens in about (at most) a fraction alpha of draws."""
    monkeypatch.setattr(chance, "EXACT_WORK", exact_work)
    a, b = _prefix_masks({"w": 400, "v": 300}, {"w": (40, 120), "v": (90, 60)})
    g = torch.Generator().manual_seed(2)
    ps = [overlap_chance(random_masks(a, g), random_masks(b, g))["total"]["p"] for _ in range(400)]
    assert 0.04 < sum(p < 0.1 for p in ps) / len(ps) < 0.16
    assert sum(p < 0.5 for p in ps) / len(ps) < 0.58


def test_iou_and_overlap_table_refuse_masks_of_other_shapes():
    wide = _m(w=[[1, 0, 0, 0]], v=[1, 0, 0])  # [1, 4] would broadcast against [4] without the check
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \(4,\) in masks a but \(1, 4\) in b"):
        iou(A, wide)
    with pytest.raises(ValueError, match="tensor 'w'"):
        iomin(A, wide)
    with pytest.raises(ValueError, match="'add'.*tensor 'v' is in masks 'add' but not in 'mul'"):
        overlap_table(A, _m(w=[1, 0, 0, 0]), ("add", "mul"))
