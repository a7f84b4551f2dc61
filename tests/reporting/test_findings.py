"""The findings' sentences say whether each claim holds against its random control."""

from modmask.reporting import addmul, doubleadd


def _addmul_accuracy(not_add_on_mul, random_not_add_on_mul, pooled_not_add_on_mul=None):
    ops = lambda add, mul: {"+": add, "*": mul}  # noqa: E731
    accuracy = {"Full": ops(100, 100), "+": ops(100, 1), "*": ops(1, 100), "¬+": ops(1, not_add_on_mul),
                "¬*": ops(90, 2), "random ¬+": ops(60, random_not_add_on_mul), "random ¬*": ops(92, 60)}
    if pooled_not_add_on_mul is not None:  # random removal pooled over the tensors (runs made before it lack it)
        accuracy |= {"random pooled ¬+": ops(30, pooled_not_add_on_mul), "random pooled ¬*": ops(95, 70)}
    return accuracy


def test_addmul_says_whether_the_other_operation_needs_the_masks_weights():
    overlap = {"iou": 0.2, "iomin": 0.6, "iou_chance": 0.1, "z": 50.0}
    entangled = addmul.finding(_addmul_accuracy(not_add_on_mul=5, random_not_add_on_mul=80), overlap)
    assert "costs multiplication 95.0 points, random removal 20.0 per tensor: multiplication needs the + mask's " \
           "weights more than random ones (against the costlier, per tensor)" in entangled
    separate = addmul.finding(_addmul_accuracy(not_add_on_mul=78, random_not_add_on_mul=80), overlap)
    assert "costs multiplication 22.0 points, random removal 20.0 per tensor: about what removing random weights " \
           "costs" in separate
    spared = addmul.finding(_addmul_accuracy(not_add_on_mul=95, random_not_add_on_mul=60), overlap)
    assert "multiplication survives it better than random removal (even the cheaper, per tensor)" in spared
    assert "2.0x chance" in separate


def test_addmul_claims_rest_on_the_random_removal_hardest_for_them():
    """Removing + costs addition 99 points: random removal costs it 40 per tensor and 70 pooled, so
    the claim rests on the pooled one; multiplication's survival rests on the cheaper one."""
    overlap = {"iou": 0.2, "iomin": 0.6, "iou_chance": 0.1, "z": 50.0}
    text = addmul.finding(_addmul_accuracy(not_add_on_mul=95, random_not_add_on_mul=60, pooled_not_add_on_mul=50),
                          overlap)
    assert ("Removing the + mask costs addition 99.0 points; removing as many random weights costs it 40.0 per tensor "
            "and 70.0 pooled: the effect holds against random removal (against the costlier, pooled).") in text
    assert ("random removal 40.0 per tensor and 50.0 pooled: multiplication survives it better than random removal "
            "(even the cheaper, per tensor)") in text
    # the costlier control decides: 99 is not 10 points above a pooled removal that costs 95
    weaker = addmul.finding({**_addmul_accuracy(95, 60, 50), "random pooled ¬+": {"+": 5, "*": 50}}, overlap)
    assert "costs it 40.0 per tensor and 95.0 pooled: the effect does not hold against random removal." in weaker
    # the cheaper control decides: spared by 35 points against per tensor, by 5 against pooled
    between = addmul.finding(_addmul_accuracy(95, 60, 90), overlap)
    assert "random removal 40.0 per tensor and 10.0 pooled: about what removing random weights costs" in between


def _doubleadd_aggregate(not_pair1_on_pair2, pooled_on_pair2=None):
    pairs = lambda one, two: {"pair 1": one, "pair 2": two}  # noqa: E731
    accuracy = {"Full": pairs(100, 100), "¬Pair 1": pairs(1, not_pair1_on_pair2), "random ¬Pair 1": pairs(50, 60)}
    if pooled_on_pair2 is not None:
        accuracy["random pooled ¬Pair 1"] = pairs(20, pooled_on_pair2)
    total = {"iou": 0.15, "iou_chance": 0.08}
    return {"accuracy": accuracy, "masks": {"overlap": {"pair1|pair2": [total]}}}


def test_doubleadd_says_whether_removing_pair_1_spares_pair_2_against_random_removal():
    assert "the masks are not functionally separate" in doubleadd.finding(_doubleadd_aggregate(20))
    assert "costs pair 2 about what removing random weights does" in doubleadd.finding(_doubleadd_aggregate(55))
    assert "the masks are functionally separate" in doubleadd.finding(_doubleadd_aggregate(90))
    both = doubleadd.finding(_doubleadd_aggregate(90, pooled_on_pair2=30))
    assert "costs pair 1 50.0 per tensor and 80.0 pooled: the Pair 1 mask's own effect holds against random " \
           "removal (against the costlier, pooled)." in both
    assert "(even the cheaper, per tensor), so pair 2 does not rely" in both
    assert "about what removing random weights does" in doubleadd.finding(_doubleadd_aggregate(90, pooled_on_pair2=85))


def _curve(areas: dict[str, tuple[float, float]]) -> dict:
    """A curves result (core.curves.density_curves) with these (sufficiency, necessity) areas."""
    methods = {m: {"sufficiency": [0.5, 0.9], "necessity": [0.5, 0.1], "sufficiency_area": s, "necessity_area": n}
               for m, (s, n) in areas.items()}
    return {"densities": [0.01, 0.1], "subset": ["w"], "full": 1.0, "empty": 0.0, "methods": methods}


def test_curves_say_where_a_mask_beats_the_best_baseline_and_which_random_control_they_rest_on():
    from modmask.reporting.study import curves_finding
    from modmask.runs import aggregate

    curve = _curve({"mask add": (0.9, 0.3), "mask mul": (0.1, 0.62), "magnitude": (0.5, 0.2),
                    "random": (0.2, 0.6), "random per tensor": (0.3, 0.4)})
    text = curves_finding(curve, "addition", {"mask add": "+ mask"})
    assert text.startswith("On addition: + mask: sufficiency area 0.90 beats the best baseline, magnitude (0.50, +0.40)")
    assert "necessity area 0.30 does not beat the best baseline, random (pooled) (0.60, -0.30), so it beats every " \
           "baseline on sufficiency only." in text
    assert "mask mul: sufficiency area 0.10 does not beat" in text and "necessity area 0.62 matches" in text
    assert ("they rest on the stricter random control of each side: for sufficiency on random (per tensor) (area "
            "0.30; random (pooled) 0.20); for necessity on random (pooled) (area 0.60; random (per tensor) 0.40).") in text
    # aggregated over seeds: the means decide
    other = _curve({"mask add": (0.7, 0.3), "mask mul": (0.1, 0.62), "magnitude": (0.5, 0.2),
                    "random": (0.2, 0.6), "random per tensor": (0.3, 0.4)})
    assert "sufficiency area 0.80 beats the best baseline, magnitude (0.50, +0.30)" in curves_finding(
        aggregate([curve, other]), "addition")
    assert "does not depend on these weights" in curves_finding({**curve, "note": "the function does not depend on "
                                                                              "these weights"}, "addition")


def test_curves_section_renders_one_run_and_an_aggregate_over_seeds(tmp_path):
    """One run's curves (plain numbers) and curves aggregated over seeds ({"mean", "std", "n"} leaves):
    the same table (areas with their spread over seeds), a figure and the verdict."""
    from modmask.reporting.study import curves_section
    from modmask.runs import aggregate

    one = _curve({"mask add": (0.9, 0.3), "magnitude": (0.5, 0.2), "random": (0.2, 0.6), "random per tensor": (0.3, 0.4)})
    other = _curve({"mask add": (0.7, 0.5), "magnitude": (0.5, 0.2), "random": (0.2, 0.6), "random per tensor": (0.3, 0.4)})
    figures = tmp_path / "figures"
    single = curves_section({"add": one}, {"add": "addition"}, figures, labels={"mask add": "+ mask"})
    assert "| + mask | 0.900 | 0.300 |" in single and "| random (pooled) | 0.200 | 0.600 |" in single
    assert "![curves add](figures/curves_add.png)" in single and (figures / "curves_add.png").exists()
    seeds = curves_section({"add": aggregate([one, other])}, {"add": "addition"}, figures, name="seeds")
    assert "| mask add | 0.800 ± 0.141 | 0.400 ± 0.141 |" in seeds and "On addition: mask add: sufficiency area 0.80" in seeds
    assert (figures / "seeds_add.png").exists()


def _masks_curve(**areas: float) -> dict:
    """A curve whose masks ("mask <name>") have these sufficiency areas (necessity 0.5)."""
    return _curve({f"mask {name}": (area, 0.5) for name, area in areas.items()})


def test_the_studies_read_split_class_and_difficulty_specific_weights_from_sufficiency_gaps():
    """A gap in sufficiency area between two masks on one function beyond the gap on a reference
    function (by more than MARGIN) is read as weights specific to the first function."""
    from modmask.reporting import cifar, dm_math, scan

    specific = {"jump": _masks_curve(simple=0.8, jump=0.2), "iid": _masks_curve(simple=0.8, jump=0.7)}
    text = scan.curves_gap(specific)
    assert "carry the jump test set +0.60 in sufficiency area beyond the jump mask's, the IID test set +0.10: the " \
           "split's test set needs weights its mask ranks low (split-specific weights)." in text
    weaker = {"jump": _masks_curve(simple=0.8, jump=0.5), "iid": _masks_curve(simple=0.8, jump=0.48)}
    assert "no split-specific weights in this reading" in scan.curves_gap(weaker)  # weaker everywhere alike

    classes = ["airplane", "automobile"]
    exclusive = {"automobile": _masks_curve(reference=0.7, **{"without-1": 0.1}),
                 "automobile-others": _masks_curve(reference=0.7, **{"without-1": 0.65})}
    assert "carry automobile +0.60 in sufficiency area beyond the mask without automobile, the other classes +0.05: " \
           "automobile needs weights the other classes' mask ranks low" in cifar.curves_specificity(exclusive, classes)
    shared = {"automobile": _masks_curve(reference=0.7, **{"without-1": 0.6}),
              "automobile-others": _masks_curve(reference=0.7, **{"without-1": 0.62})}
    assert "no weights exclusive to automobile" in cifar.curves_specificity(shared, classes)

    hard = {"hard": _masks_curve(control=0.6, easy=0.1), "easy": _masks_curve(control=0.9, easy=0.85)}
    assert "the control mask's top weights carry the hard test set +0.50 in sufficiency area beyond the easy-trained " \
           "mask's, the easy test set +0.05: hard problems need weights" in dm_math.curves_gap("m", hard)
    assert "reach sufficiency area 0.60, the easy-trained mask's 0.10" in dm_math.curves_gap("m", {"hard": hard["hard"]})


def test_removal_modes_section_puts_both_modes_side_by_side_for_one_run_and_over_seeds(tmp_path):
    """Rows: conditions (every mode's, in order); columns: each function in zero then mean; a value a
    mode lacks is '–'; aggregated values show their spread over seeds; the trained mode is named."""
    from modmask.reporting.study import removal_modes_section
    from modmask.runs import aggregate

    def block(shift):
        return {"trained_with": "mean", "modes": {
            "zero": {"+": {"add": 90.0 + shift, "mul": 80.0}, "random jump": {"jump": 10.0}},
            "mean": {"+": {"add": 95.0, "mul": 85.0 + shift}, "random jump": {"jump": 40.0}}}}

    one = removal_modes_section(block(0), {"add": "addition"}, {"+": "+ mask"})
    assert "Masks trained with `mean` removal" in one
    assert "| condition | addition, zero | addition, mean | mul, zero | mul, mean | jump, zero | jump, mean |" in one
    assert "| + mask | 90.0 | 95.0 | 80.0 | 85.0 | – | – |" in one and "| random jump | – | – | – | – | 10.0 | 40.0 |" in one
    seeds = removal_modes_section(aggregate([block(0), block(2)]), digits=2)
    assert "Masks trained with `mean` removal" in seeds and "| + | 91.00 ± 1.41 | 95.00 | 80.00 | 86.00 ± 1.41 |" in seeds


def test_aggregate_keeps_lists_that_differ_between_seeds():
    """A diagnosis may list one message in one seed and two in another: kept per seed, not indexed."""
    from modmask.runs import aggregate

    seeds = [{"acc": 1.0, "messages": ["not settled"]}, {"acc": 3.0, "messages": ["not settled", "lost"]}]
    result = aggregate(seeds)
    assert result["acc"]["mean"] == 2.0
    assert result["messages"] == [["not settled"], ["not settled", "lost"]]
    assert aggregate([{"x": [1.0, 2.0]}, {"x": [3.0, 4.0]}])["x"][1]["mean"] == 3.0


def test_units_section_reads_each_seed_as_its_own_network(tmp_path):
    """Head indices per seed and one heat map per seed (head 3 of one seed's network is not head 3 of
    another's); counts over seeds; a single seed lists its units alone."""
    from modmask.core.stats import summarize
    from modmask.reporting.study import units_section

    sets = {"enc.0.attention.out:heads": {"kind": "head", "label": "layer 0", "module": "enc.0.attention", "count": 4},
            "enc.0.ff2:neurons": {"kind": "neuron", "label": "layer 0", "module": "enc.0", "count": 3}}
    seeds = [{"sets": sets, "kept": {"a": {"enc.0.attention.out:heads": [1, 0, 0, 1], "enc.0.ff2:neurons": [1, 1, 0]},
                                     "b": {"enc.0.attention.out:heads": [1, 0, 0, 0], "enc.0.ff2:neurons": [0, 1, 0]}}},
             {"sets": sets, "kept": {"a": {"enc.0.attention.out:heads": [0, 1, 1, 1], "enc.0.ff2:neurons": [1, 1, 1]},
                                     "b": {"enc.0.attention.out:heads": [0, 1, 0, 0], "enc.0.ff2:neurons": [1, 0, 0]}}}]
    aggregated = {"sets": sets, "kept": {m: {s: [summarize([float(seed["kept"][m][s][i]) for seed in seeds])
                                                 for i in range(len(seeds[0]["kept"][m][s]))] for s in sets}
                                         for m in ("a", "b")}, "matrix": None}
    text = units_section(aggregated, tmp_path / "figures", tmp_path, seeds=seeds)
    assert "| layer 0 (enc.0.attention) | head | 4 | 2.5 ± 0.7 (seed 0: 0, 3; seed 1: 1, 2, 3) |" in text
    assert (tmp_path / "figures" / "heads_seed0.png").exists() and (tmp_path / "figures" / "heads_seed1.png").exists()
    assert (tmp_path / "figures" / "units_per_layer.png").exists()
    single = units_section(seeds[0], tmp_path / "one", tmp_path)
    assert "| 2: 0, 3 |" in single and (tmp_path / "one" / "heads.png").exists()
