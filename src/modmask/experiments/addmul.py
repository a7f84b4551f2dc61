"""Addition / multiplication: do networks use different weights for different functions?
(paper §2.1, §2.8; the poster's P_specialize: "there is some separation, but it is not perfect").

Pretrain an FNN or LSTM on a mix of a+b and a*b (mod 100), then train masks on all data (Full),
on additions only (+) and on multiplications only (*), biases unmasked. Measured: accuracy on
the add and mul validation sets under Full, +, not +, *, not *; the operation confusion under
each mask; per-layer weights, IoU and IoMin of the + and * masks; the half-mask test on Full; the
curves over density of the Full, + and * masks' logit rankings on addition and on multiplication
beside the pruning baselines (no extra training; the other operation's curve is the specificity).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.curves import CurveConfig
from ..core.evaluation import collect, inverse
from ..core.mask_config import Execution, MaskConfig
from ..data.arithmetic import ADD, MUL, AddMulData, digit_loss, digits_correct
from ..data.sampling import RandomBatches, first_examples, fixed_batches
from ..models import MLP, RepeatLSTMClassifier
from .pretrain import pretrain
from ..runs import RunDir
from ..runs.study import (Function, density_masks, function_masks, half_mask_test, mask_statistics, removal_controls,
                          removal_in_modes, removal_matrix, study_curves)

DESCRIPTION = "addition/multiplication: do networks specialise? (FNN or LSTM)"


@dataclass(frozen=True)
class Config:
    model: str = "fnn"  # fnn | lstm
    hidden: tuple[int, ...] = (2000, 2000, 2000, 2000)  # FNN sizes; the paper's "big"
    lstm_hidden: int = 256
    train_size: int = 1_000_000
    valid_size: int = 10_000
    batch_size: int = 128
    pretrain_steps: int = 20_000
    lr: float = 1e-3  # pretraining
    grad_clip: float = 1.0  # pretraining
    mask: MaskConfig = MaskConfig(steps=20_000, k=4, beta=1e-4, lr=1e-2, grad_clip=1.0)
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    random_draws: int = 5  # random masks per control of each mask and inverse mask (0: none)
    curves: CurveConfig = CurveConfig()  # curves over density of the masks' rankings; may change on resume
    checkpoint_every: int = 2000


PRESETS = {
    "smoke": dict(hidden=(32, 32), lstm_hidden=16, train_size=20_000, valid_size=1_000,
                  pretrain_steps=150, mask=dict(steps=40), checkpoint_every=100,
                  curves=dict(densities=(0.01, 0.1, 0.5), random_draws=1)),
    # the paper's small FNN with the paper's step counts (7-9 minutes on 2 CPU cores, masks jointly)
    "small": dict(hidden=(400, 400, 200)),
    # a narrower LSTM (the paper's has 256 units) and fewer steps, to fit minutes on 2 CPU cores
    "small-lstm": dict(model="lstm", lstm_hidden=128, pretrain_steps=10_000, mask=dict(steps=5_000)),
    "paper": dict(),
}

STAGES = (("full", "Full", None), ("add", "+", ADD), ("mul", "*", MUL))
OPS = ("+", "*")
PREDICTIONS = ("+ result", "* result", "neither")


def build_model(config: Config, seed: int) -> nn.Module:
    """The network, initialised from `seed` without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if config.model == "fnn":
            return MLP(42, config.hidden, 20)
        if config.model == "lstm":
            return RepeatLSTMClassifier(42, 20, hidden_size=config.lstm_hidden)
    raise ValueError(f"model must be 'fnn' or 'lstm', not {config.model!r}")


def op_confusion(model: nn.Module, masks, valid: AddMulData) -> list[list[float]]:
    """[true op][+ result, * result, neither] in % of that op's examples. A prediction equal to
    both results counts in both columns (as in the original)."""
    def columns(outputs, abo):
        a, b, op = abo.unbind(-1)
        predicted = outputs.view(-1, 2, 10).argmax(-1)
        number = predicted[:, 0] + 10 * predicted[:, 1]
        as_add = number == AddMulData.results(a, b, torch.full_like(op, ADD))
        as_mul = number == AddMulData.results(a, b, torch.full_like(op, MUL))
        return torch.stack([op, as_add, as_mul, ~(as_add | as_mul)], -1)

    batches = [(valid.encode(slice(i, i + 1000))[0], torch.stack([valid.a, valid.b, valid.op], -1)[i:i + 1000])
               for i in range(0, len(valid), 1000)]
    rows = collect(model, masks, batches, columns)
    return [(rows[rows[:, 0] == op, 1:].float().mean(0) * 100).tolist() for op in (ADD, MUL)]


def prepare(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")):
    """(the pretrained network, its Functions (Full, +, *), the validation data): pretrained in
    run_dir, or loaded from its finished checkpoint."""
    train = AddMulData.generate("train", config.train_size)
    valid = AddMulData.generate("valid", config.valid_size)
    model = build_model(config, seed).to(device)
    with run_dir.timed("pretrain"):
        pretrain(model, RandomBatches(train, config.batch_size, seed), digit_loss, run_dir,
                 steps=config.pretrain_steps, lr=config.lr, grad_clip=config.grad_clip,
                 checkpoint_every=config.checkpoint_every, progress=progress, seed=seed)
    functions = [Function(name, RandomBatches(train.subset(op), config.batch_size, 1234 + seed),
                          fixed_batches(valid.subset(op), 1000), digit_loss, digits_correct, label)
                 for name, label, op in STAGES]
    return model, functions, valid


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    model, functions, valid = prepare(config, run_dir, seed, progress=progress, device=device)
    trained = function_masks(model, functions, run_dir, config.mask, config.execution, seed, progress,
                             config.checkpoint_every)
    masks = {name: t.masks for name, t in trained.items()}

    metric = removal_matrix(model, functions, trained)
    controls = removal_controls(model, functions, trained, config.random_draws, seed)
    modes = removal_in_modes(model, functions, trained, config.random_draws, seed, config.mask.removal,
                             done={"zero": (metric, controls)})
    base = {"none": "No mask", "full": "Full", "add": "+", "not add": "¬+", "mul": "*", "not mul": "¬*",
            "not full": "¬Full"}
    labels = {**base, **{f"random {c}": f"random {label}" for c, label in base.items() if c != "none"},
              **{f"random pooled {c}": f"random pooled {label}" for c, label in base.items() if c.startswith("not ")}}
    columns = {"+": "add", "*": "mul", "iid": "full"}

    def as_accuracy(table: dict) -> dict:
        """condition -> function -> metric (controls: their mean) as the accuracy table: label -> column -> %."""
        return {labels[c]: {op: table[c][f] * 100 for op, f in columns.items()} for c in table}

    accuracy = as_accuracy(modes["modes"]["zero"])  # the controls: mean over the random draws, spread in control_std
    control_std = {labels[c]: {op: v[f]["std"] * 100 for op, f in columns.items()} for c, v in controls.items()}

    confusion = {}
    for name, label, _ in STAGES:
        confusion[label] = op_confusion(model, masks[name], valid)
        confusion["¬" + label] = op_confusion(model, inverse(masks[name]), valid)

    half = half_mask_test(model, masks["full"], fixed_batches(valid, 1000), digits_correct, "ceil")

    results = {"accuracy": accuracy, "control_std": control_std, "random_draws": config.random_draws,
               "removal_modes": {**modes, "modes": {m: as_accuracy(t) for m, t in modes["modes"].items()}},
               "confusion": confusion, "half_mask": half, "masks": mask_statistics(trained, compare=["add", "mul"])}
    if config.curves.enabled:
        trained_at = None
        if config.curves.train:  # a mask trained to each density, per operation, on streams of their own
            streams = [replace(f, train=RandomBatches(f.train.data, config.batch_size, 5678 + seed))
                       for f in functions if f.name in ("add", "mul")]
            trained_at = density_masks(model, streams, run_dir, config.mask, config.execution, config.curves.densities,
                                       seed=seed, progress=progress, checkpoint_every=config.checkpoint_every)
        with run_dir.timed("curves"):
            results["curves"] = study_curves(model, curve_functions(functions, valid, config, seed), trained,
                                             config.curves, rest=masks["full"], seed=seed, trained_at=trained_at)
    results["timings"] = run_dir.timings()
    return results


def curve_functions(functions: list[Function], valid: AddMulData, config: Config, seed: int,
                    batches: int = 8) -> list[Function]:
    """The + and * functions of the curves, each evaluated on the first config.curves.examples of
    its operation's validation examples (0: all) and with `batches` fixed training batches of it for
    the baselines that read data (taylor, wanda): drawn afresh from the seed, so a resumed run (whose
    mask batches were never drawn) scores with the same ones."""
    ops = {name: op for name, _, op in STAGES}
    return [replace(f, train=list(itertools.islice(RandomBatches(f.train.data, config.batch_size, 4321 + seed), batches)),
                    eval=fixed_batches(first_examples(valid.subset(ops[f.name]), config.curves.examples), 1000))
            for f in functions if f.name in ("add", "mul")]
