"""Double addition: does a network use the same weights for the same function on different inputs?
(paper §2.2, §2.8; the poster's P_reuse: "there is no reuse").

Two independent pairs of numbers are added (mod 100). After pretraining, masks are trained for
Full (both pairs), Pair 1 (pair 2's inputs zeroed, loss on pair 1) and Pair 2. If the network
reused one adder, the Pair 1 and Pair 2 masks would overlap much; the paper finds they do not. The
copy-weight control makes pair 1's input and output weights copies of pair 2's, so perfect reuse
is possible: there the overlap should rise, showing the method can detect reuse when it exists.
The pair masks are also read as rankings of their logits (no extra training): curves over density
on both pairs beside the pruning baselines, over all masked tensors and over the hidden layers only.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.curves import CurveConfig
from ..core.evaluation import evaluate, inverse, random_control
from ..core.mask_config import Execution, MaskConfig
from ..data.arithmetic import DoubleAddData, digit_loss, digits_correct, only_pair, pair_outputs
from ..data.sampling import MappedBatches, RandomBatches, first_examples, fixed_batches
from ..models import PairLSTM, PairwiseFNN
from .pretrain import pretrain
from ..runs import RunDir
from ..runs.study import (Function, density_masks, function_masks, half_mask_test, mask_statistics, removal_reference,
                          study_curves)

DESCRIPTION = "double addition: do networks reuse weights for the same function? (FNN or LSTM)"


@dataclass(frozen=True)
class Config:
    model: str = "fnn"  # fnn | lstm
    hidden: tuple[int, ...] = (2000, 2000, 2000, 2000)  # FNN sizes; the paper's "big"
    lstm_hidden: int = 256
    lstm_mode: str = "together"  # together | only_one_io
    train_size: int = 1_000_000
    valid_size: int = 10_000
    batch_size: int = 128
    pretrain_steps: int = 20_000
    lr: float = 1e-3  # pretraining
    grad_clip: float = 1.0  # pretraining
    # beta None: the paper's value for the model (variant_defaults)
    mask: MaskConfig = MaskConfig(steps=20_000, k=4, beta=None, lr=1e-2, grad_clip=1.0)
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    control: bool = True  # also run the copy-weight control
    random_draws: int = 5  # random masks per control of each pair mask and inverse mask (0: none)
    curves: CurveConfig = CurveConfig()  # curves over density of the pair masks' rankings; may change on resume
    checkpoint_every: int = 2000

    def variant_defaults(self) -> dict:
        return {"mask.beta": 4e-4 if self.model == "fnn" else 1e-4}


PRESETS = {
    "smoke": dict(hidden=(32, 32), lstm_hidden=16, train_size=20_000, valid_size=1_000,
                  pretrain_steps=150, mask=dict(steps=40), checkpoint_every=100,
                  curves=dict(densities=(0.01, 0.1, 0.5), random_draws=1)),
    # a narrower FNN than the paper's (800x4 small, 2000x4 big) and half the mask steps: minutes on 2 cores
    "small": dict(hidden=(200, 200, 100), mask=dict(steps=10_000)),
    "small-lstm": dict(model="lstm", lstm_hidden=128, pretrain_steps=10_000, mask=dict(steps=5_000), control=False),
    "paper": dict(),
}

CONDITIONS = ["Full", "Pair 1", "¬Pair 1", "Pair 2", "¬Pair 2"]
PAIRS = ("pair 1", "pair 2")


def build_model(config: Config, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if config.model == "fnn":
            return PairwiseFNN(config.hidden)
        if config.model == "lstm":
            return PairLSTM(config.lstm_hidden, config.lstm_mode)
    raise ValueError(f"model must be 'fnn' or 'lstm', not {config.model!r}")


def io_layers(model: nn.Module, names: list[str]) -> list[str]:
    """The masked tensors of the input and output layers (kept from Full in the variant inverse)."""
    if isinstance(model, PairwiseFNN):
        last = len(model.net.layers) - 1
        return [n for n in names if n.startswith(("net.layers.0.", f"net.layers.{last}."))]
    return [n for n in names if n == "lstm.cells.0.weight_ih" or n.startswith("output.")]


def copy_pair_weights(model: nn.Module) -> nn.Module:
    """The copy-weight control: pair 1's input columns and output rows become copies of pair 2's."""
    control = copy.deepcopy(model)
    if isinstance(control, PairwiseFNN):
        first, last = control.net.layers[0], control.net.layers[-1]
    else:
        first, last = control.lstm.cells[0], control.output
    weight_in = first.weight if isinstance(control, PairwiseFNN) else first.weight_ih
    with torch.no_grad():
        weight_in[:, :40] = weight_in[:, 40:]
        last.weight[:20] = last.weight[20:]
        last.bias[:20] = last.bias[20:]
    return control


def _pair_loss(pair):
    return lambda outputs, targets: digit_loss(*pair_outputs(outputs, targets, pair))


def _pair_correct(pair):
    return lambda outputs, targets: digits_correct(*pair_outputs(outputs, targets, pair))


def _only_pair_batches(batches, pair: int) -> MappedBatches:
    """The batches with the other pair's inputs zeroed, resumable with them (a joint stage's checkpoint)."""
    return MappedBatches(batches, lambda batch: (only_pair(batch[0], pair), batch[1]))


def _functions(train: DoubleAddData, valid_batches, config: Config, seed: int) -> list[Function]:
    functions = [Function("full", RandomBatches(train, config.batch_size, 1234 + seed), valid_batches,
                          digit_loss, digits_correct, "Full")]
    for pair in (0, 1):
        batches = _only_pair_batches(RandomBatches(train, config.batch_size, 1234 + seed + pair + 1), pair)
        functions.append(Function(f"pair{pair + 1}", batches, valid_batches, _pair_loss(pair),
                                  _pair_correct(pair), f"Pair {pair + 1}"))
    return functions


def _accuracies(model, masks: dict, valid_batches, keep_full_on: list[str], draws: int = 0, seed: int = 0,
                removal: str = "zero", reference=None) -> dict:
    """condition -> pair -> accuracy [%] on the validation set (inputs of both pairs shown); with
    `draws`, also 'random Pair i' (random weights with the pair mask's per-layer counts kept instead),
    'random ¬Pair i' (as many random weights removed instead in every layer) and 'random pooled
    ¬Pair i' (as many in total, over the layers the inverse removes the mask from), the I/O layers
    treated as in the inverse; means over the draws. removal: the removal mode; reference: the
    Reference of valid_batches under mean removal (runs.study.removal_reference)."""
    how = {"removal": removal, "reference": reference}
    conditions = {"No mask": {}, "Full": masks["full"], "Pair 1": masks["pair1"], "Pair 2": masks["pair2"],
                  "¬Pair 1": inverse(masks["pair1"], masks["full"], keep_full_on),
                  "¬Pair 2": inverse(masks["pair2"], masks["full"], keep_full_on)}
    accuracy = {label: {PAIRS[p]: evaluate(model, m, valid_batches, _pair_correct(p), **how) * 100 for p in (0, 1)}
                for label, m in conditions.items()}
    for index, name in enumerate(("pair1", "pair2") if draws else ()):
        for keep, match, label in ((True, "tensor", f"random Pair {index + 1}"),
                                   (False, "tensor", f"random ¬Pair {index + 1}"),
                                   (False, "pooled", f"random pooled ¬Pair {index + 1}")):
            options = {} if keep else {"full": masks["full"], "keep_full_on": keep_full_on}
            accuracy[label] = {PAIRS[p]: random_control(model, masks[name], valid_batches, _pair_correct(p), draws,
                                                        seed=seed * 1000 + index, keep=keep, match=match,
                                                        **options, **how)["mean"] * 100
                               for p in (0, 1)}
    return accuracy


def _curve_functions(train: DoubleAddData, valid_batches, config: Config, seed: int, batches: int = 8) -> list[Function]:
    """Pair 1 and pair 2 as functions of the curves: each scored on `valid_batches` (validation
    examples with both pairs shown: the first config.curves.examples of them), with `batches` fixed training batches of its own pair (the other pair's inputs zeroed, as
    its mask trained) for the baselines that read data, drawn afresh from the seed so that a resumed
    run scores with the same ones."""
    return [Function(f"pair{pair + 1}", list(itertools.islice(_only_pair_batches(
        RandomBatches(train, config.batch_size, 4321 + seed + pair), pair), batches)), valid_batches,
        _pair_loss(pair), _pair_correct(pair), f"Pair {pair + 1}") for pair in (0, 1)]


def pair_curves(model, trained: dict, full, io: list[str], functions: list[Function], config: CurveConfig, seed: int,
                trained_at: dict | None = None) -> dict:
    """The curves of the pair masks' rankings on both pairs, twice: over the masked tensors that
    config.subset selects (all by default), and over the hidden layers only with the input and output
    layers `io` kept from the Full mask (the paper's second inverse-mask variant); the second is left
    out where no hidden layer is masked. trained_at: masks trained to each density (config.train),
    in the first only (they were trained to their density over all masked tensors)."""
    pairs = {name: trained[name] for name in ("pair1", "pair2")}
    hidden = [n for n in full if n not in set(io)]
    return {"curves": study_curves(model, functions, pairs, config, rest=full, seed=seed, trained_at=trained_at),
            **({"curves_io_from_full": study_curves(model, functions, pairs, replace(config, subset=tuple(hidden)),
                                                    rest=full, seed=seed)} if hidden else {})}


def _study(model, run_dir: RunDir, prefix: str, config: Config, seed: int, train, valid_batches, progress):
    functions = [replace(f, name=prefix + f.name) for f in _functions(train, valid_batches, config, seed)]
    trained = function_masks(model, functions, run_dir, config.mask, config.execution, seed, progress,
                             config.checkpoint_every)
    return {name[len(prefix):]: t for name, t in trained.items()}


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    train, valid_data = DoubleAddData.generate("train", config.train_size), DoubleAddData.generate("valid", config.valid_size)
    valid = fixed_batches(valid_data, 1000)
    model = build_model(config, seed).to(device)
    with run_dir.timed("pretrain"):
        pretrain(model, RandomBatches(train, config.batch_size, seed), digit_loss, run_dir,
                 steps=config.pretrain_steps, lr=config.lr, grad_clip=config.grad_clip,
                 checkpoint_every=config.checkpoint_every, progress=progress, seed=seed)

    trained = _study(model, run_dir, "", config, seed, train, valid, progress)
    masks = {name: t.masks for name, t in trained.items()}
    io = io_layers(model, list(masks["full"]))
    accuracy = _accuracies(model, masks, valid, [], config.random_draws, seed)
    mean_read = removal_reference(model, valid, list(masks["full"]), "mean")
    results = {"accuracy": accuracy,
               "removal_modes": {"trained_with": config.mask.removal, "modes": {
                   "zero": accuracy,
                   "mean": _accuracies(model, masks, valid, [], config.random_draws, seed, "mean", mean_read)}},
               "accuracy_io_from_full": _accuracies(model, masks, valid, io, config.random_draws, seed),
               "io_layers": io,
               "masks": mask_statistics(trained, compare=["pair1", "pair2"])}

    results["half_mask"] = half_mask_test(model, masks["full"], valid, digits_correct, "floor")
    if config.curves.enabled:
        trained_at = None
        if config.curves.train:  # a mask trained to each density, per pair, on a stream of its own pair
            streams = [Function(f"pair{pair + 1}", _only_pair_batches(RandomBatches(train, config.batch_size,
                                                                                    5678 + seed + pair), pair),
                                valid, _pair_loss(pair), _pair_correct(pair), f"Pair {pair + 1}") for pair in (0, 1)]
            trained_at = density_masks(model, streams, run_dir, config.mask, config.execution, config.curves.densities,
                                       seed=seed, progress=progress, checkpoint_every=config.checkpoint_every)
        with run_dir.timed("curves"):
            curve_valid = fixed_batches(first_examples(valid_data, config.curves.examples), 1000)
            results.update(pair_curves(model, trained, masks["full"], io,
                                       _curve_functions(train, curve_valid, config, seed), config.curves, seed, trained_at))

    if config.control:
        control = copy_pair_weights(model)
        control_trained = _study(control, run_dir, "control_", config, seed, train, valid, progress)
        control_masks = {name: t.masks for name, t in control_trained.items()}
        results["control"] = {"accuracy": _accuracies(control, control_masks, valid, [], config.random_draws, seed),
                              "masks": mask_statistics(control_trained, compare=["pair1", "pair2"])}
    results["timings"] = run_dir.timings()
    return results
