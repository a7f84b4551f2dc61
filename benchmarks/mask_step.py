"""Cost of one mask-training step against one plain training step of the same network.

    python benchmarks/mask_step.py [--models mlp-800x4,lstm] [--steps 20] [--compiled]

Prints one line per model: `model=mlp-800x4 plain_ms=.. mask_ms=.. ratio=..`, both measured in
the same run (K=4, batch 128). A plain step is forward, backward and an Adam update of all weights;
a mask step is modmask's MaskTrainer.step (K samples, straight-through, Adam on the logits).

The real-model lines (`--models hf-gpt2,hf-bert,torch-transformer`, not in the default list;
hf-* need `pip install transformers`) are language models of 4 layers, d_model 512, 8 heads,
vocabulary 4,096, on 8 sequences of 64 tokens (`--batch` does not apply): GPT-2 (causal), BERT
(no padding) and an nn.TransformerEncoder, each with a next-token cross-entropy over the vocabulary.
`hf-bert-padded` adds a 2D attention mask with padding, which puts BERT on the sequential path;
`hf-bert-padded-4d` passes the same mask in 4D, which keeps the vmap path.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from modmask import MaskTrainer
from modmask.allocator import keep_freed_memory
from modmask.core.batches import without_cache
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


class TokenEncoder(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab]: nn.Embedding, nn.TransformerEncoder, Linear."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.body, self.output = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.Linear(d, vocab)

    def forward(self, ids):
        return self.output(self.body(self.embedding(ids)))


def language_model(name: str, vocab: int = 4096, d: int = 512, layers: int = 4, heads: int = 8):
    """The real-model lines: (model, inputs, targets, loss_fn) for 8 sequences of 64 tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (8, 64), generator=g)
    logits = lambda out: out.logits if hasattr(out, "logits") else out  # noqa: E731
    loss = lambda out, t: F.cross_entropy(logits(out).flatten(0, 1), t.flatten())  # noqa: E731
    if name == "torch-transformer":
        return TokenEncoder(vocab, d, layers, heads), ids, ids, loss
    import transformers

    if name == "hf-gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=d, n_layer=layers, n_head=heads,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config), {"input_ids": ids}, ids, loss
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * d, max_position_embeddings=64)
    inputs = {"input_ids": ids}
    if name.startswith("hf-bert-padded"):
        inputs["attention_mask"] = torch.ones_like(ids)
        inputs["attention_mask"][::2, 48:] = 0
        if name == "hf-bert-padded-4d":  # docs/real_models.md: a 4D mask keeps the vmap path
            inputs["attention_mask"] = inputs["attention_mask"].bool()[:, None, None, :]
    return transformers.BertForMaskedLM(config), inputs, ids, loss


def make(name: str, batch: int):
    """(model, inputs, targets, loss_fn) for one benchmark model."""
    g = torch.Generator().manual_seed(0)
    if name.startswith(("hf-", "torch-")):
        return language_model(name)
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


def time_steps(step, steps: int, warmup: int = 3) -> float:
    """Median ms per call."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(name: str, steps: int, k: int, batch: int, compiled: bool) -> str:
    model, x, y, loss_fn = make(name, batch)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        # the same call the mask step makes: keyword batches, and no key/value cache
        loss_fn(model(**without_cache(model, x)) if isinstance(x, dict) else model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.eval()  # mask training runs the model in eval mode; use the same for the plain step
    trainer = MaskTrainer(model, loss_fn, k=k, compiled=compiled)
    plain_ms = time_steps(plain_step, steps)
    mask_ms = time_steps(lambda: trainer.step((x, y)), steps)
    return (f"model={name} plain_ms={plain_ms:.1f} mask_ms={mask_ms:.1f} ratio={mask_ms / plain_ms:.2f}"
            + (f" path={trainer.path}" if trainer.path != "vmap" else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp-800x4,mlp-400-400-200,lstm,transformer,cnn")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compiled", action="store_true", help="fuse the mask kernels with torch.compile")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default allocator settings")
    args = parser.parse_args()
    if not args.default_malloc:
        keep_freed_memory()  # as the command line does; applies to the plain and the mask step alike
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k={args.k}, batch={args.batch}, "
          f"compiled={args.compiled}", flush=True)
    for name in args.models.split(","):
        print(bench(name, args.steps, args.k, args.batch, args.compiled), flush=True)


if __name__ == "__main__":
    main()
