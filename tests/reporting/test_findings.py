"""The findings' sentences say whether each claim holds against its random control."""

from modmask.reporting import addmul, doubleadd


def _addmul_accuracy(not_add_on_mul, random_not_add_on_mul):
    ops = lambda add, mul: {"+": add, "*": mul}  # noqa: E731
    return {"Full": ops(100, 100), "+": ops(100, 1), "*": ops(1, 100), "¬+": ops(1, not_add_on_mul),
            "¬*": ops(90, 2), "random ¬+": ops(60, random_not_add_on_mul), "random ¬*": ops(92, 60)}


def test_addmul_says_whether_the_other_operation_needs_the_masks_weights():
    overlap = {"iou": 0.2, "iomin": 0.6, "iou_chance": 0.1, "z": 50.0}
    entangled = addmul.finding(_addmul_accuracy(not_add_on_mul=5, random_not_add_on_mul=80), overlap)
    assert "costs multiplication 95.0 points, random removal 20.0: multiplication needs the + mask's weights" in entangled
    separate = addmul.finding(_addmul_accuracy(not_add_on_mul=78, random_not_add_on_mul=80), overlap)
    assert "costs multiplication 22.0 points, random removal 20.0: about what removing random weights costs" in separate
    spared = addmul.finding(_addmul_accuracy(not_add_on_mul=95, random_not_add_on_mul=60), overlap)
    assert "multiplication survives it better than random removal" in spared
    assert "2.0x chance" in separate


def _doubleadd_aggregate(not_pair1_on_pair2):
    pairs = lambda one, two: {"pair 1": one, "pair 2": two}  # noqa: E731
    accuracy = {"Full": pairs(100, 100), "¬Pair 1": pairs(1, not_pair1_on_pair2), "random ¬Pair 1": pairs(50, 60)}
    total = {"iou": 0.15, "iou_chance": 0.08}
    return {"accuracy": accuracy, "masks": {"overlap": {"pair1|pair2": [total]}}}


def test_doubleadd_says_whether_removing_pair_1_spares_pair_2_against_random_removal():
    assert "the masks are not functionally separate" in doubleadd.finding(_doubleadd_aggregate(20))
    assert "costs pair 2 about what removing random weights does" in doubleadd.finding(_doubleadd_aggregate(55))
    assert "the masks are functionally separate" in doubleadd.finding(_doubleadd_aggregate(90))
