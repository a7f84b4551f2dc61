"""The SCAN LSTM encoder-decoder (paper §2.3), written with plain ops so vmap can batch it.

Encoder: embedding (16) with dropout, 2-layer LSTM (200) with dropout between layers; its states
at each command's true end start the decoder. Decoder: embedding (16), 2-layer LSTM (200), Linear
to the output vocabulary (+ EOS, which doubles as the start token). Teacher forcing is decided per
batch by the caller (an argument, not a random draw inside the model, so every mask sample of a
batch sees the same choice and vmap needs no data-dependent control flow); without it the decoder
feeds back its own argmax. `forced` [B] chooses per example instead (a joint mask stage calls the
model once for the batches of several masks, some teacher-forced and some not).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .lstm import LSTM


class LSTMEncoderDecoder(nn.Module):
    def __init__(self, in_vocab: int, out_vocab: int, embedding: int = 16, hidden: int = 200,
                 layers: int = 2, dropout: float = 0.5):
        """in_vocab / out_vocab include EOS (the last id); EOS of the output is also the start token."""
        super().__init__()
        self.dropout = dropout
        self.start = out_vocab - 1
        self.in_embedding = nn.Embedding(in_vocab, embedding)
        self.out_embedding = nn.Embedding(out_vocab, embedding)
        self.encoder = LSTM(embedding, hidden, layers, dropout)
        self.decoder = LSTM(embedding, hidden, layers, dropout)
        self.output = nn.Linear(hidden, out_vocab)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, steps: int,
                teacher: torch.Tensor | None = None, forced: torch.Tensor | None = None) -> torch.Tensor:
        """src [B, T_in] ids, src_lengths [B]; decode `steps` positions; teacher [B, steps] target
        ids for teacher forcing (None: greedy); forced [B] bool: only these examples are fed the
        teacher, the others their own argmax (None: all). Returns logits [B, steps, out_vocab]."""
        embedded = F.dropout(self.in_embedding(src), self.dropout, self.training)
        _, state = self.encoder(embedded, lengths=src_lengths)
        start = torch.full_like(src[:, :1], self.start)
        if teacher is not None and forced is None:  # one pass over the shifted targets
            inputs = torch.cat([start, teacher[:, :steps - 1]], dim=1)
            hidden, _ = self.decoder(F.dropout(self.out_embedding(inputs), self.dropout, self.training), state)
            return self.output(hidden)
        token, logits = start, []
        for step in range(steps):
            hidden, state = self.decoder(F.dropout(self.out_embedding(token), self.dropout, self.training), state)
            logits.append(self.output(hidden[:, -1]))
            token = feedback(logits[-1].argmax(-1, keepdim=True), teacher, forced, step)
        return torch.stack(logits, dim=1)


def feedback(predicted: torch.Tensor, teacher: torch.Tensor | None, forced: torch.Tensor | None,
             step: int) -> torch.Tensor:
    """The next decoder input [B, 1]: the prediction [B, 1], or where `forced` [B] the teacher's
    token of this step (a where, not a branch, so vmap can batch it)."""
    if forced is None:
        return predicted
    return torch.where(forced[:, None], teacher[:, step:step + 1], predicted)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position up to and including EOS, summed, over the batch size.
    logits [B, T, V], targets [B, T], lengths [B] (with EOS)."""
    steps = logits.shape[1]
    valid = torch.arange(steps, device=targets.device) < lengths.unsqueeze(1)
    losses = F.cross_entropy(logits.transpose(1, 2), targets[:, :steps], reduction="none")
    return (losses * valid).sum() / len(targets)


def sequence_correct(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] bool: every position up to and including EOS predicted (so the length matches too)."""
    steps = logits.shape[1]
    valid = torch.arange(steps, device=targets.device) < lengths.unsqueeze(1)
    return ((logits.argmax(-1) == targets[:, :steps]) | ~valid).all(-1)
