"""Mask training without labels: the masked model's output distribution against the unmasked
model's (a faithfulness mask: the weights that reproduce the full model's outputs on the data).

    masks = train_mask(model, with_full_outputs(model, batches), kl_to_full(), steps=2000)
    masks = train_mask(hf_model, with_full_outputs(hf_model, batches, output=lambda o: o.logits),
                       kl_to_full(output=lambda o: o.logits), steps=2000)

`with_full_outputs` replaces each batch's targets with the unmasked model's log-probabilities
[B, ..., C], batch-first like the inputs, so the trainer splits them into its k chunks with the
inputs (batches.target_rows) and every mask sample's outputs meet their own references.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import torch
from torch import nn

from .batches import as_arguments, describe_output, to_device, without_cache
from .masking import model_mode

Output = Callable[[Any], torch.Tensor]


def _logits(outputs: Any, output: Output | None, whose: str) -> torch.Tensor:
    """The logits [B, ..., C] that `output` picks from a model's outputs (default: the outputs)."""
    logits = outputs if output is None else output(outputs)
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise ValueError(f"{whose}'s output {describe_output(outputs)} gives {describe_output(logits)}, not logits "
                         f"[B, ..., C]: pass `output`, the function that picks them from the model's outputs "
                         f"(e.g. output=lambda o: o.logits for Hugging Face)")
    return logits


def _inputs(batch) -> Any:
    """A batch's inputs: (inputs, targets) -> inputs (targets ignored); a tensor or a dict alone -> itself."""
    if isinstance(batch, (torch.Tensor, Mapping)):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    raise ValueError(f"a batch must be (inputs, targets), a tensor or a dict of keyword arguments; got "
                     f"{describe_output(batch)}")


class FullOutputs:
    """(inputs, reference) for every batch of `batches`, reference [B, ..., C] the unmasked model's
    log-probabilities; re-iterable whenever `batches` is (a list, a DataLoader), endless when it is
    (RandomBatches)."""

    def __init__(self, model: nn.Module, batches: Iterable, output: Output | None, mode: str):
        self.model, self.batches, self.output, self.mode = model, batches, output, mode

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        for batch in self.batches:
            inputs = _inputs(batch)
            yield inputs, self.reference(inputs)

    @torch.no_grad()
    def reference(self, inputs) -> torch.Tensor:
        """log_softmax of the unmasked model's logits on `inputs`, fp32, on the model's device."""
        args, kwargs = to_device(as_arguments(inputs), next(self.model.parameters()).device)
        with model_mode(self.model, self.mode):
            outputs = self.model(*args, **without_cache(self.model, kwargs))
        return _logits(outputs, self.output, "the full model").float().log_softmax(-1)


class _ResumableFullOutputs(FullOutputs):
    """FullOutputs of batches with state() / load_state() (RandomBatches): a mask stage checkpoints them."""

    def state(self):
        return self.batches.state()

    def load_state(self, state) -> None:
        self.batches.load_state(state)


def with_full_outputs(model: nn.Module, batches: Iterable, output: Output | None = None,
                      mode: str = "eval") -> FullOutputs:
    """Yield (inputs, reference) for every batch of `batches`: reference [B, ..., C] = log_softmax of the
    unmasked model's logits on those inputs, computed under torch.no_grad() in `mode` ('eval': without
    dropout, the model's own function). output(outputs) picks the logits from the model's outputs
    (default: the outputs themselves; lambda o: o.logits for Hugging Face). A batch may be (inputs,
    targets), whose targets are ignored, or inputs alone (a tensor or a dict of keyword arguments).

    The result re-iterates `batches` each time it is iterated (the trainer re-iterates it when it
    ends) and has state() / load_state() when `batches` has them, so mask stages stay checkpointable.
    The references of a batch are computed when it is drawn and held with it (B x ... x C floats)."""
    if mode not in ("eval", "train"):
        raise ValueError(f"model mode must be 'eval' or 'train', not {mode!r}")
    if not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of batches (a list, a DataLoader, RandomBatches), not "
                        f"{type(batches).__name__}")
    resumable = hasattr(batches, "state") and hasattr(batches, "load_state")
    return (_ResumableFullOutputs if resumable else FullOutputs)(model, batches, output, mode)


def kl_to_full(output: Output | None = None, temperature: float = 1.0) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """loss_fn(outputs, reference) = KL(full || masked) = sum_c p_full (log p_full - log p_masked), the
    mean over examples (and positions), for train_mask / run_study's Function.loss with batches from
    `with_full_outputs`. output: picks the logits [B, ..., C] from the masked model's outputs, as in
    with_full_outputs. temperature T: both distributions softened as softmax(logits / T) (no T^2
    factor). Classes the full model gives probability 0 contribute 0."""
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"temperature must be positive, got {temperature}")

    def kl(outputs: Any, reference: torch.Tensor) -> torch.Tensor:
        logits = _logits(outputs, output, "the masked model")
        if not isinstance(reference, torch.Tensor) or reference.shape != logits.shape:
            raise ValueError(f"the targets ({describe_output(reference)}) are not the full model's log-probabilities "
                             f"in the logits' shape {list(logits.shape)}: give train_mask "
                             f"with_full_outputs(model, batches), with the same `output` as kl_to_full")
        # log_softmax(log p / T) = log softmax(logits / T): the references need not be recomputed
        log_p = reference.float() if temperature == 1 else (reference.float() / temperature).log_softmax(-1)
        log_q = (logits.float() / temperature).log_softmax(-1)
        p = log_p.exp()
        terms = torch.where(p > 0, p * (log_p - log_q), 0.0)  # 0 log 0 = 0, not nan
        return terms.sum(-1).mean()

    return kl
