"""Post-LN Transformer layers with attention through F.scaled_dot_product_attention (paper §2.4).

Written with plain ops (no nn.MultiheadAttention fast path), so torch.vmap batches them over mask
samples. Q/K/V/output projections have no bias and Xavier-uniform init, as in the original code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttention(x)); x = LN(x + FF(x)). [B, T, d] -> [B, T, d]."""

    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float = 0.0):
        super().__init__()
        self.attention = Attention(d_model, heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ff_size)
        self.ff2 = nn.Linear(ff_size, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = dropout
        nn.init.xavier_uniform_(self.ff1.weight, gain=nn.init.calculate_gain("relu"))
        nn.init.xavier_uniform_(self.ff2.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        x = self.norm1(x + drop(self.attention(x, x, mask)))
        return self.norm2(x + drop(self.ff2(drop(torch.relu(self.ff1(x))))))
