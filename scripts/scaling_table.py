"""The table of docs/scaling.md: GB one mask-training step needs at K = 4, by modmask's memory formula.

    python scripts/scaling_table.py

Each model is described by its shape only (nothing is built or downloaded): parameters, the
masked weights of "all" (every linear weight; embeddings never, an untied output layer does) and
"MLP" (the feed-forward matrices), the largest masked tensor, layers, width and vocabulary. Per
step 8 sequences of 512 tokens (2 per sample); one sample's activations are taken as 68 d bytes per
layer and token in fp32 (Korthikanti et al. 2022, without the attention matrix, which
scaled_dot_product_attention does not store) plus 8 bytes per vocabulary entry and token for the
output logits and their log-softmax, the largest activation being one sample's logits (4 bytes per
entry); bf16 halves the activations. Frozen weights in fp32; every masked matrix gets its layout
copy (Hugging Face GPT-2's Conv1D layers would not: 4 bytes per weight less). GB = 10^9 bytes.
"""

from __future__ import annotations

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


def _gpt2(name, parameters, layers, d):
    return Shape(name, parameters, layers, d, 50257, 12 * layers * d * d, 8 * layers * d * d, 4 * d * d, 4 * d * d)


def _llama(name, parameters, layers, d, ffn, kv, vocab, tied):
    attention, mlp = 2 * d * d + 2 * d * kv, 3 * d * ffn
    output = 0 if tied else d * vocab
    return Shape(name, parameters, layers, d, vocab, layers * (attention + mlp) + output, layers * mlp,
                 max(d * ffn, output), d * ffn)


SHAPES = [
    _gpt2("GPT-2 small (124M)", 124e6, 12, 768),
    _gpt2("GPT-2 medium (355M)", 355e6, 24, 1024),
    _gpt2("GPT-2 large (774M)", 774e6, 36, 1280),
    _llama("Llama-3.2-1B (1.24B)", 1.24e9, 16, 2048, 8192, 512, 128256, tied=True),
    _llama("Llama-2-7B (6.74B)", 6.74e9, 32, 4096, 11008, 4096, 32000, tied=False),
]


def plan(shape: Shape, mlp: bool, samples_per_pass: int, dtype: torch.dtype) -> MemoryPlan:
    masked = int(shape.mlp_weights if mlp else shape.all_weights)
    half = 2 if dtype == torch.bfloat16 else 1
    activations = (68 * shape.d * shape.layers + 8 * shape.vocab) * TOKENS_PER_SAMPLE // half
    return MemoryPlan(model=int(4 * shape.parameters), copies=4 * masked, masked=masked,
                      largest=int(shape.largest_mlp if mlp else shape.largest_all),
                      activations_per_sample=activations, k=4, samples_per_pass=samples_per_pass, dtype=dtype,
                      largest_activation=4 * shape.vocab * TOKENS_PER_SAMPLE // half,
                      unmasked=int(shape.parameters) - masked, device="cuda")  # the GPU plan: the larger phase


def main() -> None:
    columns = [(False, 4, torch.float32), (False, 1, torch.float32), (False, 1, torch.bfloat16),
               (True, 4, torch.float32), (True, 1, torch.float32), (True, 1, torch.bfloat16)]
    print("| model | masked weights (all / MLP) | all, s=4 | all, s=1 | all, s=1 bf16 | MLP, s=4 | MLP, s=1 | "
          "MLP, s=1 bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        sizes = [f"{plan(shape, mlp, s, dtype).total / 1e9:.0f}" for mlp, s, dtype in columns]
        weights = " / ".join(f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
                             for n in (shape.all_weights, shape.mlp_weights))
        print(f"| {shape.name} | {weights} | " + " | ".join(sizes) + " |")


if __name__ == "__main__":
    main()
