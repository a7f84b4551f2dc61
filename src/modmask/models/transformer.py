"""Post-LN Transformer layers and the SCAN encoder-decoder, attention through
F.scaled_dot_product_attention (paper §2.4).

Written with plain ops (no nn.MultiheadAttention fast path), so torch.vmap batches them over mask
samples. Q/K/V/output projections have no bias and Xavier-uniform init, as in the original code.
Layer norm is torch's (biased variance inside the square root); the original divides by the
unbiased standard deviation plus 1e-5 (docs/deviations.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .seq2seq import feedback


class Attention(nn.Module):
    """Multi-head attention; parameters `query`, `key`, `value`, `merge` (Linear, no bias)."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.query, self.key, self.value, self.merge = (nn.Linear(d_model, d_model, bias=False)
                                                        for _ in range(4))
        for layer in (self.query, self.key, self.value, self.merge):
            nn.init.xavier_uniform_(layer.weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, d = x.shape
        return x.view(batch, steps, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """x: [B, Tq, d], memory: [B, Tk, d], mask: bool [B, 1, 1 or Tq, Tk] (True = attend)."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(memory)), self._heads(self.value(memory))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.merge(out.transpose(1, 2).reshape(x.shape))


def _feed_forward(d_model: int, ff_size: int) -> tuple[nn.Linear, nn.Linear]:
    """The two feed-forward layers d -> ff_size -> d, Xavier-uniform (ReLU gain on the first)."""
    ff1, ff2 = nn.Linear(d_model, ff_size), nn.Linear(ff_size, d_model)
    nn.init.xavier_uniform_(ff1.weight, gain=nn.init.calculate_gain("relu"))
    nn.init.xavier_uniform_(ff2.weight)
    return ff1, ff2


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttention(x)); x = LN(x + FF(x)). [B, T, d] -> [B, T, d]."""

    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float = 0.0):
        super().__init__()
        self.attention = Attention(d_model, heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1, self.ff2 = _feed_forward(d_model, ff_size)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        x = self.norm1(x + drop(self.attention(x, x, mask)))
        return self.norm2(x + drop(self.ff2(drop(torch.relu(self.ff1(x))))))


class DecoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttention(x, causal)); x = LN(x + CrossAttention(x, memory));
    x = LN(x + FF(x)). x [B, T, d], memory [B, S, d] -> [B, T, d]."""

    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float = 0.0):
        super().__init__()
        self.self_attention = Attention(d_model, heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attention = Attention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1, self.ff2 = _feed_forward(d_model, ff_size)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                causal_mask: torch.Tensor | None, context: torch.Tensor | None = None) -> torch.Tensor:
        """memory_mask bool [B, 1, 1, S], causal_mask bool [1, 1, T, T] (True = attend).
        context [B, T', d]: the layer's inputs at every position so far, x its last T positions
        (greedy decoding computes only the newest position; no causal mask is needed then)."""
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        x = self.norm1(x + drop(self.self_attention(x, x if context is None else context, causal_mask)))
        x = self.norm2(x + drop(self.cross_attention(x, memory, memory_mask)))
        return self.norm3(x + drop(self.ff2(drop(torch.relu(self.ff1(x))))))


def sinusoidal_positions(steps: int, d_model: int, device=None) -> torch.Tensor:
    """[steps, d_model]: sin on even, cos on odd features, wavelengths up to 10000 * 2 pi."""
    position = torch.arange(steps, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                          * (-math.log(10000.0) / d_model))
    table = torch.zeros(steps, d_model, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table


class TransformerEncoderDecoder(nn.Module):
    """The SCAN Transformer (paper §2.4): post-LN, separate input/output embeddings (N(0, 1)) plus
    sinusoidal positions (no sqrt(d) scaling), `layers` encoder and decoder layers, output Linear
    with bias. `tied=True` is the DeepMind Mathematics variant (§2.5): one embedding for input and
    output, logits = h E^T / sqrt(d). Same call as LSTMEncoderDecoder: teacher forcing in one pass,
    or greedy decoding that keeps each decoder layer's inputs so far (a cache of the prefix)."""

    def __init__(self, in_vocab: int, out_vocab: int, d_model: int = 100, heads: int = 4, ff_size: int = 200,
                 layers: int = 3, dropout: float = 0.1, tied: bool = False):
        """in_vocab / out_vocab include EOS (the last id); EOS of the output is also the start token."""
        super().__init__()
        if tied and in_vocab != out_vocab:
            raise ValueError(f"tied embeddings need one vocabulary; got {in_vocab} inputs, {out_vocab} outputs")
        self.start = out_vocab - 1
        self.d_model = d_model
        self.dropout = dropout
        self.in_embedding = nn.Embedding(in_vocab, d_model)
        self.out_embedding = self.in_embedding if tied else nn.Embedding(out_vocab, d_model)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, heads, ff_size, dropout) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, heads, ff_size, dropout) for _ in range(layers))
        self.output = None if tied else nn.Linear(d_model, out_vocab)

    def set_dropout(self, rate: float) -> None:
        """Change every dropout rate (the masks train with dropout off)."""
        for module in self.modules():
            if hasattr(module, "dropout"):
                module.dropout = rate

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        x = embedding(ids) + sinusoidal_positions(ids.shape[1], self.d_model, ids.device)
        return F.dropout(x, self.dropout, self.training)

    def _decode(self, ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, out_vocab]."""
        steps = ids.shape[1]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=ids.device).tril()[None, None]
        x = self._embed(self.out_embedding, ids)
        for layer in self.decoder:
            x = layer(x, memory, memory_mask, causal)
        return self._project(x)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> logits [B, T, out_vocab]."""
        if self.output is None:
            return x @ self.out_embedding.weight.t() * self.d_model ** -0.5
        return self.output(x)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, steps: int,
                teacher: torch.Tensor | None = None, forced: torch.Tensor | None = None) -> torch.Tensor:
        """src [B, T_in] ids, src_lengths [B]; decode `steps` positions; teacher [B, steps] target
        ids (None: greedy); forced [B] bool: only these examples are fed the teacher (None: all).
        Returns logits [B, steps, out_vocab]."""
        memory_mask = (torch.arange(src.shape[1], device=src.device) < src_lengths.unsqueeze(1))[:, None, None]
        memory = self._embed(self.in_embedding, src)
        for layer in self.encoder:
            memory = layer(memory, memory_mask)
        start = torch.full_like(src[:, :1], self.start)
        if teacher is not None and forced is None:
            return self._decode(torch.cat([start, teacher[:, :steps - 1]], dim=1), memory, memory_mask)
        # Greedy: earlier positions never see later ones, so each layer's inputs at earlier
        # positions stay fixed; keep them and run every layer on the newest position only.
        token, contexts, logits = start, [None] * len(self.decoder), []
        for step in range(steps):
            x = self.out_embedding(token) + sinusoidal_positions(step + 1, self.d_model, src.device)[step]
            for index, layer in enumerate(self.decoder):
                contexts[index] = x if contexts[index] is None else torch.cat([contexts[index], x], dim=1)
                x = layer(x, memory, memory_mask, None, context=contexts[index])
            logits.append(self._project(x))
            token = feedback(logits[-1].argmax(-1), teacher, forced, step)
        return torch.cat(logits, dim=1)
