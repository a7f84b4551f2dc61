"""SCAN: is the algorithm a network learns general, or split-specific? (paper §2.3, §2.4; the
poster: "we found split-specific weights, meaning the learned algorithm is not general").

Pretrain on the `simple` split (where the network does well on every split's kind of data), then
train a mask on each split's training set: simple (the full problem), jump, length, turn_left.
If the network had learned one general algorithm, the full-problem mask would do as well on a
split's test set as that split's own mask; the paper finds split-specific weights instead. The
from-scratch baseline trains the same network on each split directly.

Curves over density (scan_curves) read the masks as rankings of their logits, no extra training:
on each split's test set, the split mask's and the full-problem mask's; on the IID test set (the
simple split's), every mask's; every baseline on the data of the function it scores.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..core.analysis import overlap_matrix
from ..core.curves import CurveConfig
from ..core.evaluation import evaluate
from ..core.masks import Masks, random_masks
from ..core.trained import TrainedMask
from ..core.units import expand_masks
from ..core.mask_config import Execution, MaskConfig
from ..data.scan import ScanData, ScanVocabulary
from ..models import LSTMEncoderDecoder, TransformerEncoderDecoder
from ..runs import RunDir
from .pretrain import pretrain
from .seq2seq import SequenceBatches, correct, eval_batches, loss, padded_alike
from ..runs.stage import Stage, mask_stages
from ..runs.study import Function, check_no_density_masks, removal_reference, study_curves, unit_statistics

DESCRIPTION = "SCAN with an LSTM or Transformer encoder-decoder: split-specific weights"

SPLITS = ("simple", "jump", "length", "turn_left")
TOKEN_ORDER = ("I_TURN_LEFT", "I_TURN_RIGHT", "I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "EOS")


# Per-model defaults of the settings left None in Config (paper §2.3 for the LSTM, §2.4 for the
# Transformer, which always trains with teacher forcing).
MODEL_DEFAULTS = {"lstm": {"dropout": 0.5, "mask.beta": 3e-5, "teacher_forcing": 0.5},
                  "transformer": {"dropout": 0.1, "mask.beta": 6e-4, "teacher_forcing": 1.0}}


@dataclass(frozen=True)
class Config:
    model: str = "lstm"  # lstm | transformer
    embedding: int = 16  # LSTM embedding size
    hidden: int = 200  # LSTM hidden size
    d_model: int = 100  # Transformer sizes
    heads: int = 4
    ff_size: int = 200
    layers: int = 3  # Transformer layers in the encoder and in the decoder
    dropout: float | None = None  # None: the model's default
    batch_size: int = 256
    pretrain_steps: int = 25_000
    lr: float = 1e-3  # pretraining
    grad_clip: float = 5.0  # pretraining
    teacher_forcing: float | None = None  # probability per batch; None: the model's default
    mask: MaskConfig = MaskConfig(steps=25_000, k=4, beta=None, lr=1e-2, grad_clip=5.0)  # beta: the model's
    execution: Execution = Execution()  # how mask steps run; may change when a run resumes
    baseline: bool = True  # also train from scratch on the baseline splits
    baseline_splits: tuple[str, ...] = ("jump", "length", "turn_left")  # a subset saves time
    test_examples: int = 0  # evaluate on at most this many test examples per split (0: all)
    random_draws: int = 3  # random subsets of the full-problem mask per split mask: its control (0: none)
    # curves over density of the masks' rankings (scan_curves), on at most 1000 examples per test set; may
    # change on resume
    curves: CurveConfig = CurveConfig(examples=1000)
    data: str | None = None
    checkpoint_every: int = 2000

    def __post_init__(self):
        if self.model not in MODEL_DEFAULTS:
            raise ValueError(f"model must be one of {', '.join(MODEL_DEFAULTS)}, not {self.model!r}")
        unknown = [s for s in self.baseline_splits if s not in SPLITS[1:]]
        if unknown:
            raise ValueError(f"unknown baseline_splits {unknown}; choose from {', '.join(SPLITS[1:])}")
        check_no_density_masks(self.curves, "scan")

    def variant_defaults(self) -> dict:
        return MODEL_DEFAULTS[self.model]


# small: the paper's architectures, batch 64, 4k pretraining steps and 4 x 800 mask steps; the
# from-scratch baseline is left to --set baseline=true (or baseline_splits=jump for one split). The
# mask lr is 3e-2: at the paper's 1e-2 a few hundred steps left the masks 95-98% full and showed no
# gap between full-problem and split masks (measured; docs/results.md).
SMALL = dict(batch_size=64, pretrain_steps=4_000, mask=dict(steps=800, lr=3e-2), test_examples=500, baseline=False)

SMOKE_CURVES = dict(densities=(0.01, 0.1, 0.5), random_draws=1)
PRESETS = {
    "smoke": dict(embedding=8, hidden=16, batch_size=32, pretrain_steps=30, mask=dict(steps=8), test_examples=64,
                  checkpoint_every=20, curves=SMOKE_CURVES),
    "smoke-transformer": dict(model="transformer", d_model=16, heads=2, ff_size=32, layers=1, batch_size=32,
                              pretrain_steps=30, mask=dict(steps=8), test_examples=64, checkpoint_every=20,
                              curves=SMOKE_CURVES),
    # the curves evaluate the model 744 times (4 test sets, 2 x 8 densities per method): on 100 examples
    # per test set, about 0.2 s per evaluation of the LSTM on one busy CPU core (2.5 minutes)
    "small": {**SMALL, "curves": dict(examples=100)},
    # one mask at a time on a CPU: the joint call pads the four masks' batches to the longest
    # (1.26x the decoder positions, 1.5x the decoder's attention), which costs the Transformer more
    # than one call saves (2 cores: 119 s jointly against 91 s one at a time; the LSTM 159 against 173 s).
    # Its greedy decoding costs about 0.4 s per 50 examples: the curves read 50 per test set (5 minutes)
    "small-transformer": {**SMALL, "model": "transformer", "execution": {"joint": False}, "curves": dict(examples=50)},
    "paper": dict(),
    "paper-transformer": dict(model="transformer"),
}


def _model(config: Config, vocab: ScanVocabulary, seed: int) -> torch.nn.Module:
    sizes = len(vocab.in_words) + 1, len(vocab.out_words) + 1
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if config.model == "transformer":
            return TransformerEncoderDecoder(*sizes, config.d_model, config.heads, config.ff_size, config.layers,
                                             dropout=config.dropout)
        return LSTMEncoderDecoder(*sizes, config.embedding, config.hidden, dropout=config.dropout)


def accuracies(model, masks: dict, test: dict, removal: str = "zero", references: dict | None = None) -> dict:
    """Condition -> split -> accuracy [%] on the split's test set: 'no mask' and every mask, removed
    as `removal` says (references: split -> the Reference of its test set, runs.study.removal_reference)."""
    return {name: {s: evaluate(model, mask, test[s], correct, removal=removal,
                               reference=(references or {}).get(s)) * 100 for s in SPLITS}
            for name, mask in {"no mask": {}, **masks}.items()}


def removal_in_modes(model, trained: dict[str, TrainedMask], test: dict, draws: int, seed: int, trained_with: str,
                     zero: dict) -> dict:
    """The accuracy table and the split controls in both removal modes ({"trained_with", "modes": {mode:
    {condition: {split: accuracy [%]}}}}): the conditions of `accuracies`, and 'random <split>' and
    'random pooled <split>' (split_controls, on the split's test set). zero: the zero-mode table, as
    computed already; the mean mode reads each test set's means once."""
    references = {s: removal_reference(model, test[s], trained["simple"].names, "mean") for s in SPLITS}
    masks = {name: t.masks for name, t in trained.items()}
    mean = with_controls(accuracies(model, masks, test, "mean", references),
                         *(split_controls(model, trained, test, draws, seed, match, "mean", references)
                           for match in ("tensor", "pooled")))
    return {"trained_with": trained_with, "modes": {"zero": zero, "mean": mean}}


def with_controls(accuracy: dict, control: dict, pooled: dict) -> dict:
    """The accuracy table with the split controls as rows 'random <split>' and 'random pooled <split>'
    (each in its split's column only)."""
    return {**accuracy, **{f"random{label} {split}": {split: value} for label, values in (("", control),
                                                                                      (" pooled", pooled))
                           for split, value in values.items()}}


def split_controls(model, trained: dict[str, TrainedMask], test: dict, draws: int, seed: int, match: str = "tensor",
                   removal: str = "zero", references: dict | None = None) -> dict[str, float]:
    """Split -> the accuracy [%] on its test set of the full-problem mask with as many of its
    weights removed at random as the split's mask lacks of it (a random subset of the simple mask
    with the count of split & simple: per tensor, or in total over the tensors with match="pooled"),
    mean over `draws`. The split mask should do worse than this if the weights it lacks are
    split-specific, not merely as many. Unit masks (TrainedMask.units) draw units: a random subset of
    the simple mask's units, as many as the split mask shares with it. removal, references: as in
    `accuracies`."""
    if not draws:
        return {}
    generator = torch.Generator().manual_seed(seed)
    full, units = trained["simple"].decisions, trained["simple"].units
    drawn = {split: [Masks(expand_masks(random_masks(trained[split].decisions & full, generator, within=full,
                                                     match=match), units)) for _ in range(draws)]
             for split in SPLITS[1:]}
    return {split: sum(evaluate(model, mask, test[split], correct, removal=removal,
                                reference=(references or {}).get(split)) for mask in drawn[split]) / draws * 100
            for split in SPLITS[1:]}


def curve_functions(test: dict[str, ScanData], config: Config, seed: int, batches: int = 8) -> dict[str, Function]:
    """The functions of the curves, by name: each split's test set (jump, length, turn_left) and the
    IID test set ("iid", the simple split's), each evaluated greedily on its first
    config.curves.examples examples, with `batches` fixed teacher-forced batches of the same test
    set for the baselines that read data (taylor, wanda): drawn from the examples the curve does not
    evaluate, or from all of them where it evaluates all."""
    functions = {}
    for split in SPLITS:
        data, count = test[split], config.curves.examples
        rest = ScanData(data.pairs[count:], data.vocab) if 0 < count < len(data) else data
        stream = SequenceBatches(rest, config.batch_size, 4321 + seed, teacher_forcing=1.0)
        name = "iid" if split == "simple" else split
        functions[name] = Function(name, list(itertools.islice(stream, batches)),
                                   eval_batches(data, count), loss, correct,
                                   "the IID test set (simple split)" if split == "simple" else f"the {split} test set")
    return functions


def scan_curves(model, trained: dict, test: dict[str, ScanData], config: Config, seed: int) -> dict[str, dict]:
    """The curves of the masks' logit rankings (runs.study.study_curves), function -> result: on each
    split's test set the split mask's and the full-problem (simple) mask's; on the IID test set every
    mask's.

    Why these: the paper's figure 4a/4b (LSTM, Transformer) compares the accuracy of the split mask
    and of the full-problem mask on the split's test set, a question of sufficiency: do the weights
    a mask selected compute that test set? The sufficiency curves ask it at every size: where the
    full-problem mask's top weights carry the split's test set and the split mask's do not, at equal
    densities, the test set needs weights that the split's training data did not select. The IID
    test set tells that gap from a split mask that is merely weaker everywhere: on it, both masks'
    top weights should carry the function alike. Necessity is shown too, but it need not separate
    the two readings: removing the top weights of either mask may remove weights both sets need.
    """
    functions = curve_functions(test, config, seed)
    return study_curves(model, list(functions.values()), trained, config.curves, seed=seed,
                        ranked={split: ["simple", split] for split in SPLITS[1:]})  # the IID test set: every mask


def run(config: Config, run_dir: RunDir, seed: int, *, progress: bool = True, device=torch.device("cpu")) -> dict:
    vocab = ScanVocabulary.load(config.data)
    train = {s: ScanData.load(s, "train", vocab, config.data) for s in SPLITS}
    test_data = {s: ScanData.load(s, "test", vocab, config.data) for s in SPLITS}
    test = {s: eval_batches(data, config.test_examples) for s, data in test_data.items()}
    model = _model(config, vocab, seed).to(device)
    teacher = config.teacher_forcing
    settings = dict(lr=config.lr, grad_clip=config.grad_clip, checkpoint_every=config.checkpoint_every,
                    progress=progress, seed=seed)
    with run_dir.timed("pretrain"):
        pretrain(model, SequenceBatches(train["simple"], config.batch_size, seed, teacher), loss,
                 run_dir, steps=config.pretrain_steps, **settings)

    stages = [Stage(split, SequenceBatches(train[split], config.batch_size, 1234 + seed * 10 + index, teacher), loss,
                    seed * 10 + index) for index, split in enumerate(SPLITS)]
    # a joint stage pads every step's batches of the masks alike
    trained = mask_stages(run_dir, model, stages, config.mask, config.execution, progress=progress,
                          checkpoint_every=config.checkpoint_every, collate=padded_alike(vocab))
    masks = {name: t.masks for name, t in trained.items()}

    accuracy = accuracies(model, masks, test)

    rows = {word: i for i, word in enumerate(vocab.out_words)} | {"EOS": len(vocab.out_words)}
    simple, jump = masks["simple"]["output.weight"], masks["jump"]["output.weight"]
    removed = {token: (simple[rows[token]] & ~jump[rows[token]]).sum().item()
               / max(simple[rows[token]].sum().item(), 1) * 100 for token in TOKEN_ORDER}

    control = split_controls(model, trained, test, config.random_draws, seed)
    control_pooled = split_controls(model, trained, test, config.random_draws, seed, match="pooled")
    baseline = {}
    if config.baseline:
        for split in config.baseline_splits:
            scratch = _model(config, vocab, seed).to(device)
            with run_dir.timed(f"baseline:{split}"):
                pretrain(scratch, SequenceBatches(train[split], config.batch_size, seed, teacher),
                         loss, run_dir.child(f"baseline-{split}"), steps=config.pretrain_steps, **settings)
            baseline[split] = evaluate(scratch, {}, test[split], correct) * 100
    zero = with_controls(accuracy, control, control_pooled)
    results = {"accuracy": accuracy, "output_removed": removed, "baseline": baseline, "control": control,
               "removal_modes": removal_in_modes(model, trained, test, config.random_draws, seed, config.mask.removal,
                                                 zero),
               "control_pooled": control_pooled, "densities": {name: m.density() for name, m in masks.items()},
               "overlap": overlap_matrix(masks), "units": unit_statistics(trained)}
    if config.curves.enabled:
        with run_dir.timed("curves"):
            results["curves"] = scan_curves(model, trained, test_data, config, seed)
    return {**results, "timings": run_dir.timings()}
