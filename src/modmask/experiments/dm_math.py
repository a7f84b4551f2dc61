"""DeepMind Mathematics: split-specific weights on a second algorithmic benchmark (paper §2.5; the
poster: the SCAN finding "occurs on SCAN & DeepMind Mathematics with both LSTM and Transformers").

Per module: pretrain a character-level encoder-decoder on all three train difficulties, then train
two masks: the control mask on the same full training set, and a mask on train-easy only (the
original names this stage "hard", but trains it on train_easy). Both are evaluated on the held-out
hard test set. If the network solved hard problems with the same weights as easy ones, the
easy-trained mask would do as well there as the control mask; the paper finds it does much worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.analysis import overlap_table
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

    def __post_init__(self):
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
PRESETS = {
    "smoke": dict(modules=("arithmetic__add_or_sub",), d_model=16, heads=2, ff_size=32, layers=1, batch_size=16,
                  pretrain_steps=20, warmup=5, mask=dict(steps=6), mask_batch_size=16, held_out=20, test_examples=32,
                  generate_train=80, generate_test=20, checkpoint_every=10),
    "small": SMALL,
    "small-lstm": {**SMALL, "model": "lstm", "hidden": 256, "embedding": 32, "lr": 1e-3},
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


def run_module(config: Config, module: str, run_dir: RunDir, seed: int, progress: bool, device) -> dict:
    """Pretrain, the two masks, and the hard-test accuracies for one module (`config` resolved
    for it: Config.for_module)."""
    with run_dir.timed("data"):
        sets = split_module(read_module(_data_folder(config, module, progress), module), config.held_out)
    vocab = char_vocabulary(sets)
    data = {name: ScanData(pairs, vocab) for name, pairs in sets.items()}
    full = ScanData(sets["train_easy"] + sets["train_medium"] + sets["train_hard"], vocab)
    tests = {d: eval_batches(data[f"test_{d}"], config.test_examples, 256) for d in ("easy", "hard")}
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
    masks = {name: t.masks for name, t in mask_stages(run_dir, model, stages, config.mask, config.execution,
                                                      progress=progress, checkpoint_every=config.checkpoint_every,
                                                      collate=padded_alike(vocab)
                                                      ).items()}

    with run_dir.timed("evaluate"):
        accuracy = {name: {d: evaluate(model, mask, tests[d], correct) * 100 for d in tests}
                    for name, mask in {"pretrained": {}, **masks}.items()}
    return {"accuracy": accuracy, "densities": {s: m.density() for s, m in masks.items()},
            "overlap": overlap_table(masks["control"], masks["easy"], ("control", "easy"), chance=True)[-1],
            "sizes": {name: len(pairs) for name, pairs in sets.items()}, "timings": run_dir.timings()}


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    results = {}
    for module in config.modules:
        module_config = config.for_module(module)
        module_dir = run_dir.child(module)
        module_dir.check_config(to_json(module_config))  # the values this module ran with
        done = module_dir.path / "results.json"
        if not done.exists():
            write_json(done, run_module(module_config, module, module_dir, seed, progress, device))
        results[module] = read_json(done)
    return {"modules": results}
