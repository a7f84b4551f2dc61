"""Cost of one mask-training step against one plain training step of the same network.

    python benchmarks/mask_step.py [--models mlp-800x4,lstm] [--steps 20] [--compiled] [--device cuda]
        [--group-model gpt-512x4 --samples-per-pass 4,2,1 --bf16]

Prints one line per model: `model=mlp-800x4 plain_ms=.. mask_ms=.. ratio=.. plain_peak_mb=..
mask_peak_mb=.. plan_mb=..` (K=4, batch 128), then one line per samples_per_pass value of the
group model (a GPT-2-like stack of the project's Transformer layers, 8 sequences of 64 tokens).
A plain step is forward, backward and an Adam update of all weights; a mask step is modmask's
MaskTrainer.step (K samples, straight-through, Adam on the logits). Every step kind runs in a
process of its own, so its peak is its own: the RSS high-water mark on the CPU (`runtime_mb` is
that of the interpreter with torch imported, after a step of each kind on a tiny model, before the
model is built), the peak of allocated memory on a GPU. `plan_mb` is modmask's memory plan of the mask step, `plan_err` its error
against the measured peak less the runtime.
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

from modmask import MaskTrainer
from modmask.allocator import keep_freed_memory
from modmask.models import MLP, EncoderLayer, RepeatLSTMClassifier, SimpleCNN


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
    `layers` Transformer layers with causal attention (d_ff = 4d), a final norm and output layer."""

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


def make(name: str, batch: int):
    """(model, inputs, targets, loss_fn) for one benchmark model."""
    g = torch.Generator().manual_seed(0)
    if name.startswith("gpt-"):  # gpt-<d>x<layers>: 8 sequences of 64 tokens whatever --batch says
        d, layers = map(int, name[4:].split("x"))
        model = GPTLike(8192, d, layers, max(d // 64, 1), 64)
        ids = torch.randint(0, 8192, (8, 65), generator=g)
        loss = lambda out, t: F.cross_entropy(out.flatten(0, 1), t.flatten())  # noqa: E731
        return model, ids[:, :-1], ids[:, 1:], loss
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


def warm_up(device: torch.device) -> None:
    """A plain and a mask step of a tiny MLP: PyTorch's lazy set-up (autograd, vmap, Adam) is then
    part of `runtime_mb`, the same for both step kinds, not of either step's peak."""
    model, x = MLP(4, [4], 2).to(device), torch.randn(8, 4, device=device)
    y = torch.randint(0, 2, (8,), device=device)
    F.cross_entropy(model(x), y).backward()
    torch.optim.Adam(model.parameters()).step()
    MaskTrainer(model, F.cross_entropy).step((x, y))


def measure(args) -> dict:
    """One step kind in this process: its median ms, peak MB and (mask steps) the memory plan."""
    device = torch.device(args.device)
    warm_up(device)
    runtime = peak_mb(device)
    model, x, y, loss_fn = make(args.child_model, args.batch)
    model, x, y = model.to(device), x.to(device), y.to(device)
    model.eval()  # mask training runs the model in eval mode; use the same for the plain step
    result = {"runtime_mb": runtime}
    if args.child == "plain":
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    else:
        trainer = MaskTrainer(model, loss_fn, k=args.k, compiled=args.compiled, precision=args.precision,
                              samples_per_pass=args.child_samples or None)
        step = lambda: trainer.step((x, y))  # noqa: E731
    result["ms"] = time_steps(step, args.steps, device)
    result["peak_mb"] = peak_mb(device)
    if args.child == "mask":
        result.update(plan_mb=trainer.plan.total / 2**20, path=trainer.path)
    return result


def run_child(args, kind: str, model: str, samples: int = 0, precision: str = "fp32") -> dict:
    command = [sys.executable, __file__, "--child", kind, "--child-model", model, "--child-samples", str(samples),
               "--precision", precision, "--steps", str(args.steps), "--k", str(args.k), "--batch", str(args.batch),
               "--device", args.device, *(["--compiled"] if args.compiled else []),
               *(["--default-malloc"] if args.default_malloc else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{kind} step of {model} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def line(args, model: str, plain: dict | None = None, samples: int = 0, precision: str = "fp32") -> str:
    try:  # one failing line (e.g. out of memory) leaves the others
        plain = plain or run_child(args, "plain", model)
        mask = run_child(args, "mask", model, samples, precision)
    except RuntimeError as error:
        return f"model={model} samples_per_pass={samples} precision={precision} error={str(error)[-300:]!r}"
    net = mask["peak_mb"] - mask["runtime_mb"]
    return (f"model={model}" + (f" samples_per_pass={samples}" if samples else "")
            + (f" precision={precision}" if precision != "fp32" else "")
            + f" plain_ms={plain['ms']:.1f} mask_ms={mask['ms']:.1f} ratio={mask['ms'] / plain['ms']:.2f}"
            f" plain_peak_mb={plain['peak_mb']:.0f} mask_peak_mb={mask['peak_mb']:.0f}"
            f" peak_ratio={mask['peak_mb'] / plain['peak_mb']:.2f} runtime_mb={mask['runtime_mb']:.0f}"
            f" plan_mb={mask['plan_mb']:.0f} plan_err={(mask['plan_mb'] - net) / net:+.0%}"
            + (f" path={mask['path']}" if mask["path"] != "vmap" else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp-800x4,mlp-400-400-200,lstm,transformer,cnn")
    parser.add_argument("--group-model", default="gpt-512x4", help="'' for none; gpt-<d>x<layers>")
    parser.add_argument("--samples-per-pass", default="4,2,1", help="lines of the group model")
    parser.add_argument("--bf16", action="store_true", help="also the group model at samples_per_pass=1 in bf16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help="fuse the mask kernels with torch.compile")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default allocator settings")
    parser.add_argument("--child", choices=["plain", "mask"], help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-samples", type=int, default=0, help=argparse.SUPPRESS)
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
    if args.group_model:
        try:
            plain = run_child(args, "plain", args.group_model)
        except RuntimeError as error:
            print(f"model={args.group_model} error={str(error)[-300:]!r}", flush=True)
            return
        for samples in map(int, args.samples_per_pass.split(",")):
            print(line(args, args.group_model, plain, samples), flush=True)
        if args.bf16:
            print(line(args, args.group_model, plain, 1, "bf16"), flush=True)


if __name__ == "__main__":
    main()
