"""A modularity study of one trained model: one mask per function, then what they share and
what removing them costs (paper §1.7). The built-in experiments and users' own studies both go
through `run_study`.

    results = run_study(model, [Function("add", add_batches, add_eval, loss, correct), ...],
                        out="runs/mine", steps=2000)

writes masks/<function>.safetensors (logits) and results.json; `modmask.run_study` adds the
report (figures/*.png, report.md), since reports sit in a layer above this one (runs).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from torch import nn

from ..core.analysis import (iou, overlap_matrix, overlap_table, probability_histogram, shared_fraction,
                             shared_fraction_chance)
from ..core.curves import CurveConfig, baseline_rankings, density_curves
from ..core.evaluation import evaluate, half_masks, inverse, random_control, split_layers
from ..core.mask_config import Execution, MaskConfig, settings_from
from ..core.masking import mean_reference
from ..core.masks import Masks
from ..core.removal import REMOVALS, Reference
from ..core.trained import TrainedMask
from .rundir import RunDir, write_json
from .stage import Stage, mask_diagnoses, mask_stages


@dataclass(frozen=True)
class Function:
    """One function of interest: data that needs only it, and how to score it.

    train: batches for mask training (an endless iterator, or a re-iterable collection);
    eval: evaluation batches; loss(outputs, targets) -> scalar mean; metric(outputs, targets) ->
    [B] per-example score (e.g. correct or not). name must be usable as a file name.
    """

    name: str
    train: Iterable
    eval: Iterable
    loss: Callable
    metric: Callable
    label: str | None = None

    @property
    def title(self) -> str:
        return self.label or self.name


def function_masks(model: nn.Module, functions: Sequence[Function], run: RunDir, config: MaskConfig,
                   execution: Execution | None = None, seed: int = 0, progress: bool = True,
                   checkpoint_every: int = 0, collate: Callable[[list], list] | None = None) -> dict[str, TrainedMask]:
    """One mask per function, together in one pass unless execution.joint is off (mask_stages: a
    finished mask is loaded, not retrained; collate and checkpoint_every as there)."""
    stages = [Stage(f.name, f.train, f.loss, seed * 1000 + index, label=f.title) for index, f in enumerate(functions)]
    return mask_stages(run, model, stages, config, execution, progress=progress, checkpoint_every=checkpoint_every,
                       collate=collate)


def removal_matrix(model: nn.Module, functions: Sequence[Function], trained: dict[str, TrainedMask],
                   mode: str = "eval", removal: str = "zero",
                   references: Mapping[str, Reference] | None = None) -> dict[str, dict[str, float]]:
    """condition -> function -> metric, for conditions 'none' (no mask), each mask and each
    inverse mask ('not <name>'), removed as `removal` says (core/removal.py); references: function
    name -> the Reference of its eval batches (mean removal; default: read in every evaluation)."""
    conditions = {"none": {}}
    for name, mask in trained.items():
        conditions[name] = mask.masks
        conditions[f"not {name}"] = inverse(mask.masks)
    return {label: {f.name: evaluate(model, masks, f.eval, f.metric, mode, removal, (references or {}).get(f.name))
                    for f in functions}
            for label, masks in conditions.items()}


def removal_controls(model: nn.Module, functions: Sequence[Function], trained: dict[str, TrainedMask],
                     draws: int, seed: int = 0, mode: str = "eval", removal: str = "zero",
                     references: Mapping[str, Reference] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """The random controls of removal_matrix (docs/controls.md), condition -> function ->
    {"mean", "std"} over `draws` random masks: 'random <name>' keeps random weights with the
    mask's per-layer counts instead of the mask; 'random not <name>' removes as many random weights
    per layer instead of the mask's, and 'random pooled not <name>' as many in total, drawn over
    all the masked tensors (the stricter control of whole-network removal where a small layer is
    fragile). Empty for draws=0. removal, references: as in removal_matrix."""
    if draws < 0:
        raise ValueError(f"random draws must be 0 (no controls) or more, got {draws}")
    variants = ((True, "tensor", "{name}"), (False, "tensor", "not {name}"), (False, "pooled", "pooled not {name}"))
    controls = {}
    for index, (name, mask) in enumerate(trained.items() if draws else ()):
        for keep, match, label in variants:
            controls[f"random {label.format(name=name)}"] = {
                f.name: _mean_std(random_control(model, mask.decisions, list(f.eval), f.metric, draws,
                                                 seed=seed * 1000 + index, keep=keep, mode=mode, match=match,
                                                 removal=removal, reference=(references or {}).get(f.name),
                                                 units=mask.units))
                for f in functions}
    return controls


def removal_reference(model: nn.Module, batches: Iterable, names: Sequence[str], removal: str,
                      mode: str = "eval") -> Reference | None:
    """The Reference of `batches` (re-iterable) for the tensors `names` that `removal` removes by
    their mean, read once to serve every evaluation on those batches; None where none is."""
    return mean_reference(model, names, removal, batches, mode)


def eval_references(model: nn.Module, functions: Sequence[Function], names: Sequence[str], removal: str,
                    mode: str = "eval") -> dict[str, Reference | None]:
    """Function name -> removal_reference of its eval batches."""
    return {f.name: removal_reference(model, list(f.eval), names, removal, mode) for f in functions}


def removal_in_modes(model: nn.Module, functions: Sequence[Function], trained: dict[str, TrainedMask], draws: int,
                     seed: int = 0, trained_with: str = "zero", mode: str = "eval",
                     done: Mapping[str, tuple[dict, dict]] | None = None) -> dict:
    """The removal results (removal_matrix and removal_controls, labelled as they label them) in
    both removal modes, to read side by side: {"trained_with": the masks' removal mode, "modes":
    {"zero": {condition: {function: metric}}, "mean": {...}}}, each control as its mean over the
    draws. A mask means what it does in the mode it trained in; the other mode says how much of
    its effect is the shift of downstream means that zero removal causes (docs/controls.md).
    done: removal -> (matrix, controls) already computed in that mode (e.g. a study's zero-mode
    tables), used as they are. The mean mode reads each function's means once (eval_references)."""
    names = next(iter(trained.values())).names
    modes = {}
    for removal in REMOVALS:
        if done and removal in done:
            metric, controls = done[removal]
        else:
            references = eval_references(model, functions, names, removal, mode)
            metric = removal_matrix(model, functions, trained, mode, removal, references)
            controls = removal_controls(model, functions, trained, draws, seed, mode, removal, references)
        modes[removal] = {**metric, **{c: {f: v["mean"] for f, v in row.items()} for c, row in controls.items()}}
    return {"trained_with": trained_with, "modes": modes}


def _mean_std(control: dict) -> dict[str, float]:
    return {"mean": control["mean"], "std": control["std"] or 0.0}


def mask_statistics(trained: dict[str, TrainedMask], compare: Sequence[str] | None = None,
                    bins: int = 100) -> dict:
    """Weights per mask and layer, overlap of every pair with its chance level, the overlap matrix
    of the compared masks, shared fractions and histograms; for unit masks also the same read by
    unit (unit_statistics, of the compared masks)."""
    masks = {name: t.masks for name, t in trained.items()}
    compare = list(compare or masks)
    compared = {n: masks[n] for n in compare}
    return {
        "counts": {n: {**m.counts(), "total": m.count()} for n, m in masks.items()},
        "sizes": {**next(iter(masks.values())).sizes(), "total": next(iter(masks.values())).size()},
        "overlap": {f"{a}|{b}": overlap_table(masks[a], masks[b], (a, b), chance=True)
                    for a, b in itertools.combinations(compare, 2)},
        "matrix": overlap_matrix(compared) if len(compared) > 1 else None,
        "shared_fraction": {n: {**shared_fraction(compared, n, per_layer=True),
                                "total": shared_fraction(compared, n),
                                "total_chance": shared_fraction_chance(compared, n)} for n in compare}
        if len(compare) > 1 else {},
        "iou_total": {f"{a}|{b}": iou(masks[a], masks[b]) for a, b in itertools.combinations(compare, 2)},
        "histogram": {n: dict(zip(("counts", "edges"), probability_histogram(t.probs(), bins)))
                      for n, t in trained.items()},
        "units": unit_statistics({n: trained[n] for n in compare}),
    }


def unit_statistics(trained: Mapping[str, TrainedMask]) -> dict | None:
    """What unit masks keep, read by unit (None for weight masks): {"sets": {set name: {"kind",
    "label" (e.g. 'layer 3'), "module", "count"}} (every unit set, in model order), "kept": {mask:
    {set: [1 or 0 per unit]}} (over seeds: the fraction of seeds that keep each unit), "matrix":
    overlap_matrix of the masks' unit decisions with per-set rows (a unit counts one; chance: random
    units of the same count in every set)}. Weight-level tensors of a mask that mixes granularities
    are left out here: the weight statistics cover them."""
    first = next(iter(trained.values()))
    if not first.units:
        return None
    units = {name: t.unit_masks for name, t in trained.items()}
    return {"sets": {u.name: {"kind": u.kind, "label": f"layer {u.layer}" if u.layer is not None else u.name,
                              "module": u.module, "count": u.count}
                     for u in first.units},
            "kept": {name: {s: m[s].int().tolist() for s in m} for name, m in units.items()},
            "matrix": overlap_matrix(units, per_layer=True) if len(units) > 1 else None}


def half_mask_test(model: nn.Module, full: Masks, batches: Iterable, metric: Callable,
                   rounding: str = "ceil", early: Sequence[str] | None = None) -> dict:
    """The paper's half-mask test (§2.8) on the Full mask: the mask on the early tensors only and
    on the late tensors only; drops in percentage points from the whole mask's metric. The early
    tensors are the first half (rounded as given) unless listed."""
    if early is None:
        early, late = split_layers(list(full), rounding)
    else:
        late = [n for n in full if n not in set(early)]
    early_mask, late_mask = half_masks(full, early)
    whole = evaluate(model, full, batches, metric)
    return {"layers_early": early, "layers_late": late, "full_mask_accuracy": whole * 100,
            "early_masked_drop": (whole - evaluate(model, early_mask, batches, metric)) * 100,
            "late_masked_drop": (whole - evaluate(model, late_mask, batches, metric)) * 100}


NEEDS_DATA = ("taylor", "wanda")  # the baselines that read train-like batches and the loss


def density_masks(model: nn.Module, functions: Sequence[Function], run: RunDir, config: MaskConfig,
                  execution: Execution | None, densities: Sequence[float], *, seed: int = 0, progress: bool = True,
                  checkpoint_every: int = 0, collate: Callable[[list], list] | None = None) -> dict[str, dict]:
    """function name -> {density: Masks}: a mask trained to every density of the ladder
    (config with target_density = d) on every function's `train`, all in one pass (mask_stages:
    files masks/<function>@<density>.safetensors, loaded where they exist). The stages of one
    function share its `train` (each step draws a batch per stage)."""
    stages = [Stage(f"{f.name}@{d:g}", f.train, f.loss, seed * 1000 + 100 + index * len(densities) + j,
                    label=f"{f.title} at density {d:g}", config=dataclasses.replace(config, target_density=d))
              for index, f in enumerate(functions) for j, d in enumerate(densities)]
    trained = mask_stages(run, model, stages, config, execution, progress=progress,
                          checkpoint_every=checkpoint_every, collate=collate)
    return {f.name: {d: trained[f"{f.name}@{d:g}"].masks for d in densities} for f in functions}


def check_no_density_masks(curves: CurveConfig, study: str) -> None:
    """Refuse curves.train in a study whose curves read its masks' logit rankings only."""
    if curves.train:
        raise ValueError(f"curves.train (a mask trained to every density) is not available in {study}, whose curves "
                         f"read the trained masks' logit rankings only; it is in addmul and doubleadd: leave "
                         f"curves.train=false here")


def selected_functions(functions: Sequence[Function], patterns: Sequence[str] | None) -> list[Function]:
    """The functions (in their order) whose names `patterns` (CurveConfig.functions: names or glob
    patterns) match; None selects all. A pattern that matches none of them is an error naming them."""
    if patterns is None:
        return list(functions)
    names = [f.name for f in functions]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"curves.functions {list(patterns)}: {unmatched} match(es) none of the study's functions "
                         f"{names}; name some of these, or give glob patterns such as '{names[0]}*'")
    return [f for f in functions if any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]


def study_curves(model: nn.Module, functions: Sequence[Function], trained: Mapping[str, TrainedMask],
                 config: CurveConfig, *, rest: Masks | None = None, seed: int = 0, mode: str = "eval",
                 baseline_batches: int = 8, trained_at: Mapping[str, Mapping[float, Masks]] | None = None,
                 ranked: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict]:
    """The "curves" block of a study's results: function name -> core.curves.density_curves on
    that function's eval batches and metric, with every trained mask's logit ranking as the method
    "mask <name>" (no extra training) and every baseline of `config` computed on that function's
    data (taylor and wanda on the first `baseline_batches` batches of its `train`, with its loss).
    trained_at (density_masks, for config.train): masks trained to each density, as the methods
    "trained <name>". ranked: function name -> the names of the trained masks that rank it (default,
    and for functions it leaves out: all of them). config.functions selects the functions.

    The generic entry of every study (a built-in one or a user's): config.subset selects the
    tensors (names or globs of the masked ones) and `rest` (e.g. the Full mask; None: full
    weights) holds the others. The random rankings are the same for every function (seeds
    seed * 1000 + r). A function whose `train` is an iterator (e.g. RandomBatches) gives the next
    batches it has, so pass Functions with a fixed list there for baselines that repeat exactly
    when a run resumes. reporting.study.curves_section renders the block.
    """
    unknown = sorted({m for masks in (ranked or {}).values() for m in masks} - set(trained))
    if unknown:
        raise ValueError(f"ranked names masks {unknown} that were not trained; trained masks: {list(trained)}")
    names, units = next(iter(trained.values())).names, next(iter(trained.values())).units
    at_density = {f"trained {name}": by_density for name, by_density in (trained_at or {}).items()}
    block = {}
    for function in selected_functions(functions, config.functions):
        masks = {f"mask {name}": trained[name].scores for name in (ranked or {}).get(function.name, trained)}
        batches = (list(itertools.islice(iter(function.train), baseline_batches))
                   if any(b in NEEDS_DATA for b in config.baselines) else None)
        rankings = {**masks, **baseline_rankings(model, names, config, batches, function.loss, seed=seed, mode=mode,
                                                 units=units)}
        curve = density_curves(model, rankings, list(function.eval), function.metric, config, rest=rest,
                               trained=at_density, seed=seed * 1000, mode=mode, units=units)
        order = [*masks, *at_density, *(m for m in curve["methods"] if m not in masks and m not in at_density)]
        block[function.name] = {**curve, "methods": {m: curve["methods"][m] for m in order}}  # the masks first
    return block


def run_study(model: nn.Module, functions: Sequence[Function], out, *, seed: int = 0,
              compare: Sequence[str] | None = None, progress: bool = True, mask: MaskConfig | None = None,
              execution: Execution | None = None, random_draws: int = 5, curves: CurveConfig | None = CurveConfig(),
              collate: Callable[[list], list] | None = None, checkpoint_every: int = 0, **mask_settings) -> dict:
    """Train a mask per function on the frozen `model` and analyse them; see the module docstring.

    mask, execution: what the masks learn and how steps run; mask_settings: fields of either (steps,
    k, beta, lr, ..., path, samples_per_pass, joint, ...), over `mask` and `execution` where both are given. compare: the functions whose masks are compared with each other (default: all).
    random_draws: random masks per control (removal_controls; 0: none). curves: what the curves
    over density measure (study_curves: every mask's logit ranking beside the baselines, on each
    function; None or enabled=False: none; with train, also masks trained to each density,
    density_masks).
    The masks train together in one pass (execution.joint, the default): collate(batches) -> batches
    makes the functions' batches of a step one shape where they are not (e.g. sequences padded
    alike); checkpoint_every > 0 saves the stage every that many steps when every function's
    `train` has state() / load_state() (e.g. RandomBatches), so a killed run resumes mid-stage.
    Returns the results (also in results.json).
    """
    if random_draws < 0:
        raise ValueError(f"random_draws must be 0 (no controls) or more, got {random_draws}")
    if curves is not None and curves.examples:
        raise ValueError(f"curves.examples={curves.examples} is read by the built-in studies, which build their own "
                         f"evaluation data; run_study evaluates each Function's `eval` as given: pass eval batches "
                         f"that hold the examples the curves should read, and CurveConfig(examples=0)")
    run = RunDir(out)
    options, execution, unknown = settings_from(mask, execution, mask_settings)
    if unknown:
        raise TypeError(f"run_study got unknown option(s) {sorted(unknown)}")
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ValueError(f"function names must be unique, got {names}")
    trained = function_masks(model, functions, run, options, execution, seed, progress, checkpoint_every, collate)
    metric = removal_matrix(model, functions, trained, options.mode)
    controls = removal_controls(model, functions, trained, random_draws, seed, options.mode)
    results = {
        "functions": {f.name: f.title for f in functions},
        "metric": metric,
        "controls": controls,
        "removal_modes": removal_in_modes(model, functions, trained, random_draws, seed, options.removal, options.mode,
                                          done={"zero": (metric, controls)}),
        "masks": mask_statistics(trained, compare),
    }
    if curves is not None and curves.enabled:
        trained_at = (density_masks(model, functions, run, options, execution, curves.densities, seed=seed,
                                    progress=progress, checkpoint_every=checkpoint_every, collate=collate)
                      if curves.train else None)
        with run.timed("curves"):
            results["curves"] = study_curves(model, functions, trained, curves, seed=seed, mode=options.mode,
                                             trained_at=trained_at)
    results["timings"] = run.timings()
    results["training"] = mask_diagnoses(run)  # every stage's verdict: settled, on target, function kept
    write_json(run.file("results.json"), results)
    return results
