"""DeepMind Mathematics: split-specific weights on a second algorithmic benchmark (paper §2.5; the
poster: the SCAN finding "occurs on SCAN & DeepMind Mathematics with both LSTM and Transformers").

Per module: pretrain a character-level encoder-decoder on all three train difficulties, then train
two masks: the control mask on the same full training set, and a mask on train-easy only (the
original names this stage "hard", but trains it on train_easy). Both are evaluated on the held-out
hard test set. If the network solved hard problems with the same weights as easy ones, the
easy-trained mask would do as well there as the control mask; the paper finds it does much worse.

Curves over density (module_curves) read both masks as rankings of their logits, no extra
training, on the hard test set and on the easy one, with the baselines on training problems of the
same difficulty. Each module keeps its curves in <module>/curves.json with the settings they were
computed with, so new curve settings recompute them without touching its other results.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.analysis import overlap_table
from ..core.curves import CurveConfig
from ..core.evaluation import evaluate
from ..core.mask_config import Execution, MaskConfig
from ..data.dm_math import PAPER_MODULES, char_vocabulary, read_module, split_module
from ..data.dm_math_generate import generate
from ..data.root import data_root, writable_dir
from ..data.scan import ScanData
from ..models import LSTMEncoderDecoder, TransformerEncoderDecoder
from ..runs import RunDir, read_json, write_json
from ..config import fill_defaults, to_json
from .pretrain import pretrain
from .seq2seq import SequenceBatches, correct, eval_batches, loss, padded_alike
from ..runs.stage import Stage, mask_stages
from ..runs.study import Function, check_no_density_masks, removal_reference, study_curves, unit_statistics

DESCRIPTION = "DeepMind Mathematics: does a mask trained on easy problems solve hard ones?"

# The paper's per-module settings (§2.5): pretraining batch and steps, linear warm-up steps, and
# the masks' beta, learning rate, steps and batch size.
def _module(batch_size, pretrain_steps, warmup, beta, mask_lr, mask_steps, mask_batch_size) -> dict:
    return {"batch_size": batch_size, "pretrain_steps": pretrain_steps, "warmup": warmup, "mask.beta": beta,
            "mask.lr": mask_lr, "mask.steps": mask_steps, "mask_batch_size": mask_batch_size}


MODULE_SETTINGS = {
    "arithmetic__add_or_sub": _module(256, 30_000, 0, 2e-5, 0.03, 30_000, 256),
    "algebra__linear_1d": _module(512, 200_000, 5_000, 1e-6, 0.02, 50_000, 400),
    "calculus__differentiate": _module(128, 40_000, 0, 1e-5, 0.03, 40_000, 128),
    "comparison__sort": _module(256, 30_000, 0, 3e-6, 0.03, 30_000, 256),
    "polynomials__collect": _module(128, 200_000, 5_000, 1e-6, 0.02, 50_000, 256),
}
STAGES = ("control", "easy")  # control: all train difficulties; easy: train_easy only


@dataclass(frozen=True)
class Config:
    modules: tuple[str, ...] = PAPER_MODULES
    model: str = "transformer"  # transformer | lstm
    d_model: int = 512  # Transformer (post-LN, tied embeddings)
    heads: int = 8
    ff_size: int = 2048
    layers: int = 6
    dropout: float = 0.1
    embedding: int = 64  # LSTM encoder-decoder
    hidden: int = 512
    lr: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.995)
    adam_eps: float = 1e-9
    grad_clip: float = 0.1
    # None: the module's setting from MODULE_SETTINGS (for_module); a number: the same for every module.
    batch_size: int | None = None
    pretrain_steps: int | None = None
    warmup: int | None = None
    mask_batch_size: int | None = None
    mask: MaskConfig = MaskConfig(steps=None, k=8, beta=None, lr=None, grad_clip=1.0)
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    # The original divides the regulariser by the pretraining batch size even where the mask batch
    # differs (linear_1d, polycollect); modmask divides by the mask batch unless this is set.
    original_regulariser_batch: bool = False
    held_out: int = 10_000  # test examples taken from each train difficulty
    test_examples: int = 0  # evaluate on at most this many hard test examples (0: all)
    data: str | None = None  # the released archive's folder; None: generate with DeepMind's generator
    generate_train: int = 200_000  # examples per train difficulty and module when generating
    generate_test: int = 10_000  # interpolation examples per module when generating
    generate_seed: int = 0
    checkpoint_every: int = 2000
    # curves over density of the two masks' rankings (module_curves) on at most 1000 problems per test set; may
    # change on resume
    curves: CurveConfig = CurveConfig(examples=1000)

    def __post_init__(self):
        check_no_density_masks(self.curves, "dm_math")
        if self.model not in ("transformer", "lstm"):
            raise ValueError(f"model must be transformer or lstm, not {self.model!r}")
        unknown = [m for m in self.modules if m not in MODULE_SETTINGS]
        if unknown:
            raise ValueError(f"unknown modules {unknown}; the paper's modules: {', '.join(MODULE_SETTINGS)}")
        if (self.mask_batch_size or self.mask.k) % self.mask.k:
            raise ValueError(f"mask_batch_size must be a multiple of mask.k={self.mask.k}")

    def for_module(self, module: str) -> "Config":
        """The settings left None filled with the paper's values for `module`."""
        defaults = MODULE_SETTINGS[module]
        reg_batch = self.batch_size or defaults["batch_size"] if self.original_regulariser_batch else None
        return fill_defaults(self, {**defaults, "mask.reg_batch_size": reg_batch})


# small: a 2+2-layer Transformer (d 128) and short schedules, about 12 minutes per module on 2 CPU
# cores (pretraining 0.39 s per step at batch 64 there); on generated data.
SMALL = dict(d_model=128, heads=4, ff_size=256, layers=2, lr=5e-4, grad_clip=1.0, batch_size=64,
             pretrain_steps=1_200, warmup=120, mask_batch_size=64, mask=dict(steps=300, lr=0.03),
             held_out=1_000, test_examples=500, generate_train=12_000, generate_test=1_000)
# small's curves: the hard test set only, 50 problems, 4 densities, 2 random draws: 74 greedy decodings of 50
# problems per module, about 1.5 s each on one busy core (2 minutes per module; both test sets, 8 densities and
# 3 draws would cost 20)
SMALL_CURVES = dict(functions=("hard",), examples=50, densities=(0.005, 0.02, 0.1, 0.5), random_draws=2)
PRESETS = {
    "smoke": dict(modules=("arithmetic__add_or_sub",), d_model=16, heads=2, ff_size=32, layers=1, batch_size=16,
                  pretrain_steps=20, warmup=5, mask=dict(steps=6), mask_batch_size=16, held_out=20, test_examples=32,
                  generate_train=80, generate_test=20, checkpoint_every=10,
                  curves=dict(densities=(0.01, 0.1, 0.5), random_draws=1)),
    "small": {**SMALL, "curves": SMALL_CURVES},
    "small-lstm": {**SMALL, "model": "lstm", "hidden": 256, "embedding": 32, "lr": 1e-3, "curves": SMALL_CURVES},
    "paper": dict(),
    "paper-lstm": dict(model="lstm"),
}


def _data_folder(config: Config, module: str, progress: bool) -> Path:
    """The released archive (config.data), or generated files cached per generation setting."""
    if config.data is not None:
        return Path(config.data)
    cache = writable_dir(data_root()) / "dm_math_generated" / (
        f"seed{config.generate_seed}-train{config.generate_train}-test{config.generate_test}")
    return generate(module, cache, config.generate_train, config.generate_test, config.generate_seed, progress)


def _model(config: Config, vocab_size: int, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if config.model == "transformer":
            return TransformerEncoderDecoder(vocab_size, vocab_size, config.d_model, config.heads, config.ff_size,
                                             config.layers, config.dropout, tied=True)
        return LSTMEncoderDecoder(vocab_size, vocab_size, config.embedding, config.hidden, dropout=config.dropout)


def prepare_module(config: Config, module: str, run_dir: RunDir, seed: int, progress: bool, device):
    """(the pretrained network, its masks by stage name, the data sets by name) of one module
    (`config` resolved for it: Config.for_module): trained in run_dir, or loaded from its files."""
    with run_dir.timed("data"):
        sets = split_module(read_module(_data_folder(config, module, progress), module), config.held_out)
    vocab = char_vocabulary(sets)
    data = {name: ScanData(pairs, vocab) for name, pairs in sets.items()}
    full = ScanData(sets["train_easy"] + sets["train_medium"] + sets["train_hard"], vocab)
    model = _model(config, len(vocab.in_words) + 1, seed).to(device)
    with run_dir.timed("pretrain"):
        pretrain(model, SequenceBatches(full, config.batch_size, seed, 1.0), loss, run_dir,
                 steps=config.pretrain_steps, lr=config.lr, grad_clip=config.grad_clip,
                 adam_betas=config.adam_betas, adam_eps=config.adam_eps, warmup=config.warmup,
                 checkpoint_every=config.checkpoint_every, progress=progress, seed=seed)

    stages = [Stage(stage, SequenceBatches(train, config.mask_batch_size, 1234 + seed * 10 + index, 1.0), loss,
                    seed * 10 + index)
              for index, (stage, train) in enumerate({"control": full, "easy": data["train_easy"]}.items())]
    # a joint stage pads every step's batches of the masks alike
    trained = mask_stages(run_dir, model, stages, config.mask, config.execution, progress=progress,
                          checkpoint_every=config.checkpoint_every, collate=padded_alike(vocab))
    return model, trained, data


def run_module(config: Config, run_dir: RunDir, model, trained: dict, data: dict) -> dict:
    """The hard- and easy-test accuracies of the pretrained network and both masks of one module, and
    the same in both removal modes ("removal_modes"; each test set's means read once)."""
    tests = {d: eval_batches(data[f"test_{d}"], config.test_examples, 256) for d in ("easy", "hard")}
    masks = {name: t.masks for name, t in trained.items()}

    def accuracies(removal: str) -> dict:
        references = {d: removal_reference(model, tests[d], trained["control"].names, removal) for d in tests}
        return {name: {d: evaluate(model, mask, tests[d], correct, removal=removal, reference=references[d]) * 100
                       for d in tests} for name, mask in {"pretrained": {}, **masks}.items()}

    with run_dir.timed("evaluate"):
        accuracy = accuracies("zero")
        modes = {"trained_with": config.mask.removal, "modes": {"zero": accuracy, "mean": accuracies("mean")}}
    return {"accuracy": accuracy, "removal_modes": modes, "densities": {s: m.density() for s, m in masks.items()},
            "overlap": overlap_table(masks["control"], masks["easy"], ("control", "easy"), chance=True)[-1],
            "sizes": {name: len(d) for name, d in data.items()}, "units": unit_statistics(trained)}


def module_curves(model, trained: dict, data: dict, config: Config, seed: int, batches: int = 8) -> dict:
    """The curves of the control and easy-trained masks' rankings (runs.study.study_curves) on the
    hard test set ("hard") and on the easy one ("easy"), each on its first config.curves.examples
    problems, with `batches` fixed teacher-forced training batches of the same difficulty for the
    baselines that read data. The paper's claim is one of sufficiency: the easy-trained mask's top
    weights should carry the hard test set far less than the control mask's, more so than on the
    easy test set."""
    functions = [Function(d, list(itertools.islice(SequenceBatches(data[f"train_{d}"], config.mask_batch_size,
                                                                   4321 + seed, 1.0), batches)),
                          eval_batches(data[f"test_{d}"], config.curves.examples, 256), loss, correct,
                          f"the {d} test set") for d in ("hard", "easy")]
    return study_curves(model, functions, trained, config.curves, seed=seed)


CURVE_SETTINGS = [f"curves.{field.name}" for field in dataclasses.fields(CurveConfig)]


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    results = {}
    for module in config.modules:
        module_config = config.for_module(module)
        module_dir = run_dir.child(module)
        # the values this module ran with; the curve settings may change, curves.json says which it has
        module_dir.check_config(to_json(module_config), free=CURVE_SETTINGS)
        done, curves = module_dir.path / "results.json", module_dir.path / "curves.json"
        settings = to_json(module_config.curves)
        stale = config.curves.enabled and (not curves.exists() or read_json(curves)["settings"] != settings)
        if not done.exists() or stale:
            model, trained, data = prepare_module(module_config, module, module_dir, seed, progress, device)
            if not done.exists():
                write_json(done, run_module(module_config, module_dir, model, trained, data))
            if stale:
                with module_dir.timed("curves"):
                    block = module_curves(model, trained, data, module_config, seed)
                write_json(curves, {"settings": settings, "curves": block})
        results[module] = {**read_json(done), "timings": module_dir.timings()}
        if config.curves.enabled:
            results[module]["curves"] = read_json(curves)["curves"]
    return {"modules": results}
