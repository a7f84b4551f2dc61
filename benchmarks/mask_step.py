"""Cost of one mask-training step against one plain training step of the same network: time and memory.

    python benchmarks/mask_step.py [--models mlp-800x4,lstm,hf-gpt2] [--steps 20] [--compiled] [--device cuda]
        [--group-model gpt-512x4 --samples-per-pass 4,2,1 --bf16] [--joint mlp-400-400-200:3,cnn:11]
        [--ladder mlp-400-400-200:7] [--removal mlp-400-400-200,transformer,cnn]
        [--granularity head,neuron,head+neuron] [--models hf-gpt2,hf-gpt2-1024x8 --units]

Prints one line per model: `model=mlp-800x4 plain_ms=.. mask_ms=.. ratio=.. plain_peak_mb=..
mask_peak_mb=.. peak_ratio=.. runtime_mb=.. plan_mb=.. plan_err=..` (K=4, batch 128), then one line
per samples_per_pass value of the group model (`--group-model`: gpt-<d>x<layers> or any model name,
e.g. hf-gpt2) and one per `--granularity` (`granularity=head`: the attention tensors masked by head,
`neuron`: the MLP tensors by neuron, `head+neuron`: both; core/units.py; with `--units` also for
every `--models` line, e.g. hf-gpt2 (d 512 x 4) and hf-gpt2-1024x8), then one line per `--joint` model: `model=mlp-400-400-200 masks=3 joint_ms=..
separate_ms=.. ratio=.. one_mask_mk_ms=.. bound=..`, one step of one MaskTrainer of M masks (each
mask on its own batch) against M separate mask steps, in this process, the kinds' steps interleaved so all see the same machine (ratio below 1: the joint step is faster). one_mask_mk_ms
is one mask's step with M K samples on the M batches: the per-sample work of the joint step without
its per-mask work, so `bound` (one_mask_mk_ms / separate_ms) is the ratio a joint step could reach.
Then one line per `--ladder` model: `model=mlp-400-400-200 ladder=7 ladder_ms=.. one_mask_ms=..
ratio=.. per_density=..`, one step of the masks of a density ladder (the curves' first 7 densities
as target_density, one MaskTrainer) against one mask's step: what training the curve's masks costs.
Then one line per `--removal` model: `model=cnn removal=mean mean_ms=.. zero_ms=.. ratio=..`, one mask
step under mean removal (the removed weights' mean contributions put back, core/removal.py) against
one under zero removal, alternating rounds as above. A plain step is forward, backward, clipping and an Adam update of all weights, in
eval mode, with the same call the mask step makes; a mask step is modmask's MaskTrainer.step (K
samples, straight-through, Adam on the logits).

Every step kind runs in a process of its own, so its peak is its own: the RSS high-water mark on
the CPU (`runtime_mb` is that of the interpreter with torch (and transformers, for hf-*) imported,
after a step of each kind on a tiny model, before the model is built), the peak of allocated
memory on a GPU. `plan_mb` is modmask's memory plan of the mask step, `plan_err` its error against
the measured peak less the runtime. A line whose step fails (out of memory, ...) says `error=..`.

Models: mlp-800x4 and mlp-400-400-200 (42 inputs, 20 outputs), lstm (2 layers, hidden 256, 20
steps), transformer (one encoder layer, d 256), cnn (the paper's simple CIFAR CNN), resnet (ResNet-20,
BatchNorm), each on batch `--batch`, and, not in the default list, cnn-wide (the ResNet at widths 144,
288, 576: 21.9M weights, on 8x8 inputs; e.g. `--models cnn-wide --batch 64`); and language models
on 8 sequences of 64 tokens with a next-token cross-entropy
(`--batch` does not apply): gpt-<d>x<layers> (a GPT-2-shaped stack of the project's Transformer
layers, vocabulary 8,192), and, not in the default list, 4 layers of d_model 512, 8 heads,
vocabulary 4,096: torch-transformer (nn.TransformerEncoder), hf-gpt2 (GPT-2, causal) and hf-bert
(BERT, no padding); hf-* need `pip install transformers`. `hf-bert-padded` adds a 2D attention mask
with padding, which puts BERT on the sequential path; `hf-bert-padded-4d` passes the same mask in
4D, which keeps the vmap path.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from modmask import Execution, MaskConfig, MaskTrainer
from modmask.allocator import keep_freed_memory
from modmask.core.batches import to_device, without_cache
from modmask.models import MLP, CifarResNet, EncoderLayer, SimpleCNN

DEFAULT_MODELS = "mlp-800x4,mlp-400-400-200,lstm,transformer,cnn,resnet"


class SequenceClassifier(nn.Module):
    """A recurrent or attention body over [B, T, d] inputs, then Linear on the last step."""

    def __init__(self, body: nn.Module, d: int, classes: int = 10):
        super().__init__()
        self.body, self.output = body, nn.Linear(d, classes)

    def forward(self, x):
        hidden = self.body(x)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.output(hidden[:, -1])


class GPTLike(nn.Module):
    """A GPT-2-shaped language model from the project's layers: token and position embeddings,
    `layers` Transformer layers with causal attention (d_ff = 4d), a final norm and output layer.
    Token ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, steps: int):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(steps, d)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, 4 * d) for _ in range(layers))
        self.norm, self.output = nn.LayerNorm(d), nn.Linear(d, vocab)
        self.register_buffer("causal", torch.ones(steps, steps, dtype=torch.bool).tril(), persistent=False)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions.weight[:ids.shape[1]]
        for layer in self.layers:
            x = layer(x, self.causal[:ids.shape[1], :ids.shape[1]])
        return self.output(self.norm(x))


class TokenEncoder(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab]: nn.Embedding, nn.TransformerEncoder, Linear."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.body, self.output = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.Linear(d, vocab)

    def forward(self, ids):
        return self.output(self.body(self.embedding(ids)))


def _logits(out):
    return out.logits if hasattr(out, "logits") else out  # a Hugging Face ModelOutput or a tensor


def next_token_loss(out, targets):
    """Cross-entropy of logits [B, T, vocab] (or a ModelOutput holding them) against ids [B, T]."""
    return F.cross_entropy(_logits(out).flatten(0, 1), targets.flatten())


def language_model(name: str, tokens: int = 64, d: int = 512, layers: int = 4, heads: int = 8):
    """(model, inputs, targets, loss_fn) of a language-model line on 8 sequences of `tokens` tokens."""
    if name.startswith("gpt-"):  # gpt-<d>x<layers>
        d, layers = map(int, name[4:].split("x"))
        vocab, heads = 8192, max(d // 64, 1)
    else:
        vocab = 4096
        if name.startswith("hf-gpt2-"):  # hf-gpt2-<d>x<layers>
            d, layers = map(int, name[len("hf-gpt2-"):].split("x"))
            heads, name = max(d // 64, 1), "hf-gpt2"
    ids = torch.randint(0, vocab, (8, tokens + 1), generator=torch.Generator().manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    if name.startswith("gpt-"):
        return GPTLike(vocab, d, layers, heads, tokens), inputs, targets, next_token_loss
    if name == "torch-transformer":
        return TokenEncoder(vocab, d, layers, heads), inputs, targets, next_token_loss
    import transformers

    if name == "hf-gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=tokens, n_embd=d, n_layer=layers,
                                         n_head=heads, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config), {"input_ids": inputs}, targets, next_token_loss
    if name not in ("hf-bert", "hf-bert-padded", "hf-bert-padded-4d"):
        raise ValueError(f"unknown model {name!r}")
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * d,
                                     max_position_embeddings=tokens)
    kwargs = {"input_ids": inputs}
    if name != "hf-bert":
        kwargs["attention_mask"] = torch.ones_like(inputs)
        kwargs["attention_mask"][::2, 3 * tokens // 4:] = 0
        if name == "hf-bert-padded-4d":  # docs/real_models.md: a 4D mask keeps the vmap path
            kwargs["attention_mask"] = kwargs["attention_mask"].bool()[:, None, None, :]
    return transformers.BertForMaskedLM(config), kwargs, targets, next_token_loss


def make(name: str, batch: int):
    """(model, inputs, targets, loss_fn) for one benchmark model."""
    if name.startswith(("gpt-", "hf-", "torch-")):
        return language_model(name)
    g = torch.Generator().manual_seed(0)
    if name.startswith("mlp"):
        hidden = [800] * 4 if name == "mlp-800x4" else [400, 400, 200]
        model = MLP(42, hidden, 20)
        x = torch.rand(batch, 42, generator=g)
        y = torch.randint(0, 10, (batch, 2), generator=g)
        loss = lambda out, t: F.cross_entropy(out.view(-1, 2, 10).flatten(0, 1), t.flatten())  # noqa: E731
        return model, x, y, loss
    if name == "lstm":
        from modmask.models import LSTM
        model, x = SequenceClassifier(LSTM(32, 256, 2), 256), torch.randn(batch, 20, 32, generator=g)
    elif name == "transformer":
        model, x = SequenceClassifier(EncoderLayer(256, 4, 1024), 256), torch.randn(batch, 20, 256, generator=g)
    elif name == "cnn":
        model, x = SimpleCNN(), torch.randn(batch, 3, 32, 32, generator=g)
    elif name == "resnet":  # BatchNorm (eval mode: running statistics) between the convolutions
        model, x = CifarResNet(10, blocks=3), torch.randn(batch, 3, 32, 32, generator=g)
    elif name == "cnn-wide":  # 21.9M weights, most in 3x3 convolutions of up to 576 channels; 8x8 inputs keep it fast
        model, x = CifarResNet(10, blocks=3, widths=(144, 288, 576)), torch.randn(batch, 3, 8, 8, generator=g)
    else:
        raise ValueError(f"unknown model {name!r}")
    return model, x, torch.randint(0, 10, (batch,), generator=g), F.cross_entropy


def time_steps(step, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Median ms per call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def warm_up(device: torch.device, model_name: str) -> None:
    """A plain and a mask step of a tiny MLP: PyTorch's lazy set-up (autograd, vmap, Adam) is then
    part of `runtime_mb`, the same for both step kinds, not of either step's peak; so is the
    import of transformers for the hf-* models."""
    if model_name.startswith("hf-"):
        import transformers  # noqa: F401
    model, x = MLP(4, [4], 2).to(device), torch.randn(8, 4, device=device)
    y = torch.randint(0, 2, (8,), device=device)
    F.cross_entropy(model(x), y).backward()
    torch.optim.Adam(model.parameters()).step()
    MaskTrainer(model, F.cross_entropy).prepare([(x, y)]).step([(x, y)])


def unit_settings(model: nn.Module, granularity: str) -> dict:
    """MaskConfig fields of a unit-mask line: 'head' masks the attention tensors by head, 'neuron'
    the MLP tensors by neuron, 'head+neuron' both (core/structure.py finds them); nothing else is
    masked, so the line measures the units alone."""
    from modmask.core.structure import attention_heads, mlp_neurons

    sets = {"head": attention_heads(model) if "head" in granularity else [],
            "neuron": mlp_neurons(model) if "neuron" in granularity else []}
    rules = {s.name: kind for kind, found in sets.items() for u in found for s in u.slices if s.name.endswith("weight")}
    return {"parameters": list(rules), "granularity": ",".join(f"{n}={kind}" for n, kind in rules.items())}


def measure(args) -> dict:
    """One step kind in this process: its median ms, peak MB and (mask steps) the memory plan."""
    device = torch.device(args.device)
    warm_up(device, args.child_model)
    runtime = peak_mb(device)
    model, x, y, loss_fn = make(args.child_model, args.batch)
    model, x, y = model.to(device), to_device(x, device), y.to(device)
    model.eval()  # mask training runs the model in eval mode; use the same for the plain step
    result = {"runtime_mb": runtime}
    if args.child == "plain":
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            # the same call the mask step makes: keyword batches, and no key/value cache
            loss_fn(model(**without_cache(model, x)) if isinstance(x, dict) else model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    else:
        execution = Execution(compiled=args.compiled, precision=args.precision,
                              samples_per_pass=args.child_samples or None)
        units = unit_settings(model, args.child_granularity) if args.child_granularity != "weight" else {}
        trainer = MaskTrainer(model, loss_fn, MaskConfig(k=args.k, **units), execution).prepare([(x, y)])
        step = lambda: trainer.step([(x, y)])  # noqa: E731
    result["ms"] = time_steps(step, args.steps, device)
    result["peak_mb"] = peak_mb(device)
    if args.child == "mask":
        result.update(plan_mb=trainer.plan.total / 2**20, path=trainer.path)
    return result


def run_child(args, kind: str, model: str, samples: int = 0, precision: str = "fp32", granularity: str = "weight"
              ) -> dict:
    """measure() of one step kind in a fresh process; a RuntimeError with its error's last line if it fails."""
    command = [sys.executable, __file__, "--child", kind, "--child-model", model, "--child-samples", str(samples),
               "--child-granularity", granularity,
               "--precision", precision, "--steps", str(args.steps), "--k", str(args.k), "--batch", str(args.batch),
               "--device", args.device, *(["--compiled"] if args.compiled else []),
               *(["--default-malloc"] if args.default_malloc else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"{kind} step failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def line(args, model: str, plain: dict | None = None, samples: int = 0, precision: str = "fp32",
         granularity: str = "weight") -> str:
    """One output line: the plain step (measured here unless given) against the mask step."""
    settings = (f" samples_per_pass={samples}" if samples else "") + (f" precision={precision}"
                                                                      if precision != "fp32" else "")
    settings += f" granularity={granularity}" if granularity != "weight" else ""
    try:  # one failing line (e.g. out of memory) leaves the others
        plain = plain or run_child(args, "plain", model)
        mask = run_child(args, "mask", model, samples, precision, granularity)
    except RuntimeError as error:
        return f"model={model}{settings} error={str(error)!r}"
    net = mask["peak_mb"] - mask["runtime_mb"]
    return (f"model={model}{settings}"
            f" plain_ms={plain['ms']:.1f} mask_ms={mask['ms']:.1f} ratio={mask['ms'] / plain['ms']:.2f}"
            f" plain_peak_mb={plain['peak_mb']:.0f} mask_peak_mb={mask['peak_mb']:.0f}"
            f" peak_ratio={mask['peak_mb'] / plain['peak_mb']:.2f} runtime_mb={mask['runtime_mb']:.0f}"
            f" plan_mb={mask['plan_mb']:.0f} plan_err={(mask['plan_mb'] - net) / net:+.0%}"
            + (f" path={mask['path']}" if mask["path"] != "vmap" else ""))


def group_lines(args):
    """The group model's lines: one plain step, then the mask step at every samples_per_pass (and bf16)."""
    try:
        plain = run_child(args, "plain", args.group_model)
    except RuntimeError as error:
        yield f"model={args.group_model} error={str(error)!r}"
        return
    for samples in map(int, args.samples_per_pass.split(",")):
        yield line(args, args.group_model, plain, samples)
    if args.bf16:
        yield line(args, args.group_model, plain, 1, "bf16")
    for granularity in filter(None, args.granularity.split(",")):
        yield line(args, args.group_model, plain, granularity=granularity)


def joint_line(args, spec: str) -> str:
    """`model:masks`: one joint step of the masks against as many separate steps (median ms of
    rounds in which each kind runs `args.steps` steps, alternately)."""
    name, masks = spec.split(":")
    device, masks = torch.device(args.device), int(masks)
    model, _, _, loss_fn = make(name, args.batch)
    model = model.to(device).eval()
    batches = [[tuple(t.to(device) for t in make(name, args.batch)[1:3]) for _ in range(masks)] for _ in range(4)]
    config, execution = MaskConfig(k=args.k), Execution(compiled=args.compiled)
    separate = [MaskTrainer(model, loss_fn, config, execution, seed=m).prepare([batches[0][m]]) for m in range(masks)]
    joint = MaskTrainer(model, loss_fn, [config] * masks, execution, seed=list(range(masks))).prepare(batches[0])
    together = [tuple(torch.cat(parts) for parts in zip(*step_batches)) for step_batches in batches]
    one = MaskTrainer(model, loss_fn, MaskConfig(k=args.k * masks), execution).prepare([together[0]])
    kinds = {"joint": lambda i: joint.step(batches[i % 4]),
             "separate": lambda i: [t.step([b]) for t, b in zip(separate, batches[i % 4])],
             "one": lambda i: one.step([together[i % 4]])}
    times = {kind: [] for kind in kinds}
    for round in range(6):  # round 0 warms up
        for kind, step in kinds.items():
            times[kind].append(time_steps(lambda: [step(i) for i in range(max(args.steps // 5, 1))], 1, device, 0))
    joint_ms, separate_ms, one_ms = (statistics.median(times[k][1:]) / max(args.steps // 5, 1) for k in kinds)
    return (f"model={name} masks={masks} joint_ms={joint_ms:.1f} separate_ms={separate_ms:.1f} "
            f"ratio={joint_ms / separate_ms:.2f} one_mask_mk_ms={one_ms:.1f} bound={one_ms / separate_ms:.2f}")


def ladder_line(args, spec: str) -> str:
    """`model:densities`: one step of a ladder of masks trained to the first `densities` of the
    curves' default ladder (target_density, one MaskTrainer, each mask on its own batch) against one
    step of a single mask (median ms of alternating rounds, as joint_line)."""
    from modmask.core.curves import DENSITIES

    name, count = spec.split(":")
    device, count = torch.device(args.device), int(count)
    model, _, _, loss_fn = make(name, args.batch)
    model = model.to(device).eval()
    batches = [[tuple(t.to(device) for t in make(name, args.batch)[1:3]) for _ in range(count)] for _ in range(4)]
    execution = Execution(compiled=args.compiled)
    configs = [MaskConfig(k=args.k, target_density=d) for d in DENSITIES[:count]]
    ladder = MaskTrainer(model, loss_fn, configs, execution, seed=list(range(count))).prepare(batches[0])
    one = MaskTrainer(model, loss_fn, MaskConfig(k=args.k), execution).prepare([batches[0][0]])
    kinds = {"ladder": lambda i: ladder.step(batches[i % 4]), "one": lambda i: one.step([batches[i % 4][0]])}
    times = {kind: [] for kind in kinds}
    for round in range(6):  # round 0 warms up
        for kind, step in kinds.items():
            times[kind].append(time_steps(lambda: [step(i) for i in range(max(args.steps // 5, 1))], 1, device, 0))
    ladder_ms, one_ms = (statistics.median(times[k][1:]) / max(args.steps // 5, 1) for k in kinds)
    return (f"model={name} ladder={count} ladder_ms={ladder_ms:.1f} one_mask_ms={one_ms:.1f} "
            f"ratio={ladder_ms / one_ms:.2f} per_density={ladder_ms / one_ms / count:.2f}")


def removal_line(args, name: str) -> str:
    """One mask step under mean removal against one under zero removal (median ms of alternating
    rounds, as joint_line), each on the same batches."""
    device = torch.device(args.device)
    model, _, _, loss_fn = make(name, args.batch)
    model = model.to(device).eval()
    batches = [tuple(t.to(device) for t in make(name, args.batch)[1:3]) for _ in range(4)]
    execution = Execution(compiled=args.compiled)
    trainers = {mode: MaskTrainer(model, loss_fn, MaskConfig(k=args.k, removal=mode), execution).prepare([batches[0]])
                for mode in ("mean", "zero")}
    times = {mode: [] for mode in trainers}
    steps = max(args.steps // 5, 1)
    for round in range(6):  # round 0 warms up
        for mode, trainer in trainers.items():
            times[mode].append(time_steps(lambda: [trainer.step([batches[i % 4]]) for i in range(steps)], 1, device, 0))
    mean_ms, zero_ms = (statistics.median(times[m][1:]) / steps for m in trainers)
    return f"model={name} removal=mean mean_ms={mean_ms:.1f} zero_ms={zero_ms:.1f} ratio={mean_ms / zero_ms:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated; '' for none")
    parser.add_argument("--group-model", default="gpt-512x4",
                        help="'' for none; gpt-<d>x<layers> or any model name, e.g. hf-gpt2")
    parser.add_argument("--samples-per-pass", default="4,2,1", help="lines of the group model")
    parser.add_argument("--bf16", action="store_true", help="also the group model at samples_per_pass=1 in bf16")
    parser.add_argument("--joint", default="mlp-400-400-200:3,cnn:11",
                        help="model:masks lines of joint against separate mask steps; '' for none")
    parser.add_argument("--ladder", default="mlp-400-400-200:7",
                        help="model:densities lines of a ladder of target-density masks against one mask; '' for none")
    parser.add_argument("--removal", default="mlp-400-400-200,transformer,cnn",
                        help="model lines of a mean-removal mask step against a zero-removal one; '' for none")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compiled", action="store_true", help="fuse the mask kernels with torch.compile")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default allocator settings")
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)  # the child processes' options
    parser.add_argument("--child", choices=["plain", "mask"], help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-samples", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-granularity", default="weight", help=argparse.SUPPRESS)
    parser.add_argument("--granularity", default="head,neuron,head+neuron",
                        help="unit-mask lines of the group model (and of every --models line with --units)")
    parser.add_argument("--units", action="store_true", help="also the --granularity lines of every --models model")
    args = parser.parse_args()
    if not args.default_malloc:
        keep_freed_memory()  # as the command line does; applies to the plain and the mask step alike
    if args.child:
        print(json.dumps(measure(args)), flush=True)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k={args.k}, batch={args.batch}, "
          f"compiled={args.compiled}, device={args.device}", flush=True)
    for name in filter(None, args.models.split(",")):
        print(line(args, name), flush=True)
        for granularity in filter(None, args.granularity.split(",")) if args.units else ():
            print(line(args, name, granularity=granularity), flush=True)
    if args.group_model:
        for text in group_lines(args):
            print(text, flush=True)
    for spec in filter(None, args.joint.split(",")):
        print(joint_line(args, spec), flush=True)
    for spec in filter(None, args.ladder.split(",")):
        print(ladder_line(args, spec), flush=True)
    for name in filter(None, args.removal.split(",")):
        print(removal_line(args, name), flush=True)


if __name__ == "__main__":
    main()
