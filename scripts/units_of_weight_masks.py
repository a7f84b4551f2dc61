"""Weight masks read by unit, beside unit masks of the same pretrained networks: does a weight mask
keep fewer of the weights of the heads (neurons) that a unit mask removes?

    python scripts/units_of_weight_masks.py --weights runs/scan-tf-small --units runs/scan-tf-heads \
        --masks simple,jump [--seeds 0,1]

For every seed (the two runs must share their pretrained networks, seed by seed) and mask, the
unit masks' decisions (masks/<name>.safetensors of --units, whose file holds its unit sets) and
the fraction of each unit's weights the weight mask of --weights keeps (core.units.unit_scores of
the mask read as 0/1). Prints (with --lines) one line per unit, (with --sets) one per unit set, and per mask the weight masks' mean kept
fraction over the units the unit mask keeps and over those it removes, with the rank-biserial
correlation (the chance that a kept unit's fraction exceeds a removed one's, minus the reverse:
0 where the two readings are unrelated, 1 where they agree on every pair).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from modmask import TrainedMask
from modmask.core.units import unit_scores


def agreement(kept: list[float], removed: list[float]) -> float | None:
    """Rank-biserial correlation of two groups: P(k > r) - P(k < r) over all pairs (None if a group is empty)."""
    if not kept or not removed:
        return None
    pairs = [(k > r) - (k < r) for k in kept for r in removed]
    return sum(pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="run directory of the weight masks")
    parser.add_argument("--units", required=True, help="run directory of the unit masks")
    parser.add_argument("--masks", default="simple,jump")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lines", action="store_true", help="also one line per unit")
    parser.add_argument("--sets", action="store_true", help="also one line per unit set (layer)")
    args = parser.parse_args()
    for seed in args.seeds.split(","):
        for name in args.masks.split(","):
            unit_mask = TrainedMask.load(Path(args.units) / f"seed-{seed}" / "masks" / f"{name}.safetensors")
            weight_mask = TrainedMask.load(Path(args.weights) / f"seed-{seed}" / "masks" / f"{name}.safetensors")
            fractions = unit_scores({n: m.float() for n, m in weight_mask.masks.items()}, unit_mask.units)
            groups = {True: [], False: []}
            for unit in unit_mask.units:
                decisions, kept = unit_mask.unit_masks[unit.name], fractions[unit.name]
                if args.sets:
                    print(f"seed {seed} {name} {unit.name}: unit mask keeps {int(decisions.sum())}/{unit.count}, "
                          f"weight mask keeps {float(kept.mean()):.3f} of the weights")
                for index, (decision, fraction) in enumerate(zip(decisions.tolist(), kept.tolist())):
                    groups[decision].append(fraction)
                    if args.lines:
                        print(f"seed {seed} {name} {unit.unit_names()[index]} ({unit.name}): "
                              f"unit mask {'keeps' if decision else 'removes'}, weight mask keeps {fraction:.3f}")
            mean = {k: sum(v) / len(v) if v else float("nan") for k, v in groups.items()}
            rho = agreement(groups[True], groups[False])
            print(f"seed {seed} {name}: units kept {len(groups[True])}/{len(groups[True]) + len(groups[False])}; "
                  f"weight mask keeps {mean[True]:.3f} of a kept unit's weights, {mean[False]:.3f} of a removed "
                  f"one's; rank-biserial {'n/a' if rho is None else f'{rho:+.2f}'}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
