"""Batches, loss and metric of the sequence-to-sequence studies (SCAN, DeepMind Mathematics):
teacher forcing drawn per batch, greedy-decoding evaluation batches, sequence accuracy, and the
padding that lets the masks of one joint stage share a call of the model."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch.nn import functional as F

from ..data.sampling import RandomBatches, fixed_batches
from ..data.scan import ScanData
from ..models.seq2seq import sequence_correct, sequence_loss


class SequenceBatches:
    """Endless sequence-to-sequence training batches as ((src, src_lengths, steps, teacher or None), (targets,
    lengths)), teacher forcing chosen per batch with probability p; seeded and resumable."""

    def __init__(self, data: ScanData, batch_size: int, seed: int, teacher_forcing: float):
        self.batches = RandomBatches(data, batch_size, seed)
        self.coin = torch.Generator().manual_seed(seed + 1)
        self.teacher_forcing = teacher_forcing

    def __iter__(self):
        return self

    def __next__(self):
        (src, src_lengths), (targets, lengths) = next(self.batches)
        teach = torch.rand((), generator=self.coin).item() < self.teacher_forcing
        return (src, src_lengths, targets.shape[1], targets if teach else None), (targets, lengths)

    def state(self):
        return torch.cat([self.batches.state(), self.coin.get_state()])

    def load_state(self, state):
        size = len(self.batches.state())
        self.batches.load_state(state[:size])
        self.coin.set_state(state[size:].clone())  # set_state needs a tensor of its own


def pad_alike(batches: list, pads: tuple[int, int]) -> list:
    """SequenceBatches' batches of the masks of one joint stage, in one shape (the MaskTrainer calls
    the model once for all of them): sources and targets padded with `pads` (input id, output id)
    to the longest, every batch decoding the most steps, and where only some of them are
    teacher-forced, `forced` [B] says which examples are. No loss changes beyond rounding: the
    models read the lengths, decode causally, and the loss counts the positions up to EOS only."""
    in_length = max(inputs[0].shape[1] for inputs, _ in batches)
    steps = max(inputs[2] for inputs, _ in batches)
    teach = [inputs[3] is not None for inputs, _ in batches]
    padded = []
    for (src, src_lengths, _, teacher), (targets, lengths) in batches:
        src = F.pad(src, (0, in_length - src.shape[1]), value=pads[0])
        targets = F.pad(targets, (0, steps - targets.shape[1]), value=pads[1])
        inputs = (src, src_lengths, steps, targets if any(teach) else None)
        if any(teach) and not all(teach):
            inputs += (torch.full((len(src),), teacher is not None),)
        padded.append((inputs, (targets, lengths)))
    return padded


def padded_alike(vocab) -> Callable[[list], list]:
    """The `collate` of a joint stage over SequenceBatches of `vocab`: pad_alike with its EOS ids."""
    return partial(pad_alike, pads=(vocab.in_eos, vocab.out_eos))


def eval_batches(data: ScanData, limit: int, batch_size: int = 512) -> list:
    """Greedy-decoding batches: ((src, src_lengths, steps, None), (targets, lengths))."""
    if limit:
        data = ScanData(data.pairs[:limit], data.vocab)
    return [((src, src_lengths, targets.shape[1], None), (targets, lengths))
            for (src, src_lengths), (targets, lengths) in fixed_batches(data, batch_size)]


def loss(outputs, targets):
    return sequence_loss(outputs, *targets)


def correct(outputs, targets):
    return sequence_correct(outputs, *targets)
