"""The tables of docs/scaling.md: GB one mask-training step needs at K = 4, by modmask's memory formula.

    python scripts/scaling_table.py [--granularity weight|head+neuron]

Each model is described by its shape only (nothing is built or downloaded): parameters, the
masked weights of "all" (every linear weight; embeddings never, an untied output layer does) and
"MLP" (the feed-forward matrices), the largest masked tensor, layers, width, attention heads, MLP
hidden units and vocabulary. Per step 8 sequences of 512 tokens (2 per sample); one sample's
activations are taken as 68 d bytes per layer and token in fp32 (Korthikanti et al. 2022, without
the attention matrix, which scaled_dot_product_attention does not store) plus 8 bytes per
vocabulary entry and token for the output logits and their log-softmax, the largest activation
being one sample's logits (4 bytes per entry); bf16 halves the activations. Frozen weights in fp32;
every masked matrix gets its layout copy (Hugging Face GPT-2's Conv1D layers would not: 4 bytes per
weight less). GB = 10^9 bytes.

`--granularity head+neuron` prints, for every shape, masks over every attention head and MLP neuron
(core/units.py; the output layer unmasked) against weight masks of all linear weights and of the
MLP's, in fp32 and bf16 at s = 4 and 1. A head or neuron is one logit and gates its projection's
input, so no weight is copied; every parameter then gets the bf16 copy that unmasked tensors get
under bf16. The gates add no activation to the formula's: each saves the input of its projection,
which the formula already counts as that projection's saved input (the frozen projections save
fewer than the formula's, so for unit masks it is an upper bound).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from modmask.core.memory import MemoryPlan

TOKENS_PER_SAMPLE = 2 * 512


@dataclass(frozen=True)
class Shape:
    name: str
    parameters: float
    layers: int
    d: int
    vocab: int
    all_weights: float   # masked weights, "all"
    mlp_weights: float   # masked weights, "MLP"
    largest_all: float   # elements of the largest masked tensor, "all"
    largest_mlp: float
    heads: int           # attention heads per layer
    ffn: int             # MLP hidden units per layer


def _gpt2(name, parameters, layers, d):
    return Shape(name, parameters, layers, d, 50257, 12 * layers * d * d, 8 * layers * d * d, 4 * d * d, 4 * d * d,
                 d // 64, 4 * d)


def _llama(name, parameters, layers, d, ffn, kv, vocab, tied, heads):
    attention, mlp = 2 * d * d + 2 * d * kv, 3 * d * ffn
    output = 0 if tied else d * vocab
    return Shape(name, parameters, layers, d, vocab, layers * (attention + mlp) + output, layers * mlp,
                 max(d * ffn, output), d * ffn, heads, ffn)


SHAPES = [
    _gpt2("GPT-2 small (124M)", 124e6, 12, 768),
    _gpt2("GPT-2 medium (355M)", 355e6, 24, 1024),
    _gpt2("GPT-2 large (774M)", 774e6, 36, 1280),
    _llama("Llama-3.2-1B (1.24B)", 1.24e9, 16, 2048, 8192, 512, 128256, tied=True, heads=32),
    _llama("Llama-2-7B (6.74B)", 6.74e9, 32, 4096, 11008, 4096, 32000, tied=False, heads=32),
]


def plan(shape: Shape, masks: str, samples_per_pass: int, dtype: torch.dtype) -> MemoryPlan:
    """masks: 'all' or 'mlp' (weight masks of those tensors) or 'head+neuron' (unit masks)."""
    half = 2 if dtype == torch.bfloat16 else 1
    activations = (68 * shape.d * shape.layers + 8 * shape.vocab) * TOKENS_PER_SAMPLE // half
    common = dict(activations_per_sample=activations, k=4, samples_per_pass=samples_per_pass, dtype=dtype,
                  largest_activation=4 * shape.vocab * TOKENS_PER_SAMPLE // half,
                  model=int(4 * shape.parameters), device="cuda")  # the GPU plan: the larger phase
    if masks == "head+neuron":  # a logit per head and neuron, a gate on the inputs of o_proj (d) and down_proj (ffn)
        return MemoryPlan(copies=0, masked=0, largest=0, unmasked=int(shape.parameters),
                          units=shape.layers * (shape.heads + shape.ffn), gated=shape.layers * (shape.d + shape.ffn),
                          **common)
    masked = int(shape.mlp_weights if masks == "mlp" else shape.all_weights)
    return MemoryPlan(copies=4 * masked, masked=masked, largest=int(shape.largest_mlp if masks == "mlp"
                                                                     else shape.largest_all),
                      unmasked=int(shape.parameters) - masked, **common)


def weight_table() -> None:
    columns = [("all", 4, torch.float32), ("all", 1, torch.float32), ("all", 1, torch.bfloat16),
               ("mlp", 4, torch.float32), ("mlp", 1, torch.float32), ("mlp", 1, torch.bfloat16)]
    print("| model | masked weights (all / MLP) | all, s=4 | all, s=1 | all, s=1 bf16 | MLP, s=4 | MLP, s=1 | "
          "MLP, s=1 bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        sizes = [f"{plan(shape, masks, s, dtype).total / 1e9:.0f}" for masks, s, dtype in columns]
        weights = " / ".join(f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
                             for n in (shape.all_weights, shape.mlp_weights))
        print(f"| {shape.name} | {weights} | " + " | ".join(sizes) + " |")


def unit_table() -> None:
    columns = [(4, torch.float32), (1, torch.float32), (4, torch.bfloat16), (1, torch.bfloat16)]
    print("| model | masks | logits | fp32, s=4 | fp32, s=1 | bf16, s=4 | bf16, s=1 |")
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        for masks, label in (("all", "weight, all"), ("mlp", "weight, MLP"), ("head+neuron", "head+neuron")):
            plans = [plan(shape, masks, s, dtype) for s, dtype in columns]
            logits = plans[0].masked + plans[0].units
            count = f"{logits / 1e9:.2f}B" if logits >= 1e9 else f"{logits / 1e6:.0f}M" if logits >= 1e6 \
                else f"{logits / 1e3:.0f}K"
            print(f"| {shape.name} | {label} | {count} | " + " | ".join(f"{p.total / 1e9:.1f}" for p in plans) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--granularity", choices=["weight", "head+neuron"], default="weight",
                        help="weight: the weight-mask table; head+neuron: unit masks against weight masks")
    args = parser.parse_args()
    weight_table() if args.granularity == "weight" else unit_table()


if __name__ == "__main__":
    main()
