import pytest
import torch

from modmask import (Masks, exclusive, iomin, iou, overlap_table, probability_histogram,
                     shared_fraction, stability)


def _m(**rows):
    return Masks({n: torch.tensor(v, dtype=torch.bool) for n, v in rows.items()})


A = _m(w=[1, 1, 1, 0, 0, 0], v=[1, 0, 0, 0])
B = _m(w=[0, 1, 1, 1, 1, 0], v=[0, 1, 0, 0])


def test_iou_and_iomin_by_hand():
    assert iou(A, B, per_layer=True) == {"w": 2 / 5, "v": 0.0}
    assert iou(A, B) == 2 / 7  # intersections 2 + 0, unions 5 + 2
    assert iomin(A, B, per_layer=True) == {"w": 2 / 3, "v": 0.0}
    assert iomin(A, B) == 2 / 4  # min(4, 5)


def test_shared_fraction_and_exclusive():
    c = _m(w=[1, 0, 0, 0, 0, 1], v=[0, 0, 0, 1])
    masks = {"a": A, "b": B, "c": c}
    # a uses w0 w1 w2 v0; w1, w2 are in b and w0 in c: 3 of 4
    assert shared_fraction(masks, "a") == 3 / 4
    assert shared_fraction(masks, "a", per_layer=True) == {"w": 1.0, "v": 0.0}
    assert exclusive(masks, "a") == _m(w=[0, 0, 0, 0, 0, 0], v=[1, 0, 0, 0])
    assert exclusive(masks, "b") == _m(w=[0, 0, 0, 1, 1, 0], v=[0, 1, 0, 0])


def test_overlap_table_rows_and_total():
    rows = overlap_table(A, B, ("add", "mul"))
    assert [r["tensor"] for r in rows] == ["w", "v", "total"]
    assert rows[0] == {"tensor": "w", "size": 6, "count_add": 3, "count_mul": 4, "iou": 0.4,
                       "iomin": 2 / 3, "shared_add": 2 / 3, "shared_mul": 0.5}
    assert rows[-1]["iou"] == 2 / 7 and rows[-1]["shared_add"] == 0.5


def test_empty_masks_give_zero_not_an_error():
    empty = _m(w=[0, 0])
    assert iou(empty, empty) == 0.0 and iomin(empty, empty) == 0.0


def test_stability_over_pairs():
    result = stability([A, A, B])
    assert result["pairs"] == 3
    assert result["mean"] == pytest.approx((1 + 2 / 7 + 2 / 7) / 3)
    with pytest.raises(ValueError):
        stability([A])


def test_probability_histogram():
    counts, edges = probability_histogram(torch.tensor([0.0, 0.01, 0.99, 1.0, 0.5]), bins=10)
    assert sum(counts) == 5 and counts[0] == 2 and counts[-1] == 2 and counts[5] == 1
    assert len(edges) == 11 and edges[0] == 0.0 and edges[-1] == 1.0
