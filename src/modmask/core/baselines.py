"""Importance scores of the cheap pruning heuristics: the baselines a trained mask is compared with
at the same size (a mask of density d keeps the d fraction of weights with the highest scores).

    scores = importance(model, "wanda", list(trained.logits), eval_batches)
    masks = top_masks(scores, trained.masks.density(), per_tensor=False)   # or per_tensor=True

- magnitude: |w|.
- wanda (Sun et al. 2023): |w_ij| * ||x_j||_2, x_j the j-th input feature of the weight's layer over
  every row it sees (examples and positions) when the unmasked model runs on `batches`. Wanda's paper
  compares weights within each output row; here the comparison is `top_masks`' (pooled or per tensor).
  What x is, by the module that holds the parameter (forward hooks read it, so a layer called twice
  counts both calls):
    nn.Linear W [out, in] and Hugging Face's Conv1D W [in, out] (x @ W): the layer input's last dim;
    nn.Conv1d/2d/3d W [out, in / groups, *kernel]: per input channel, over examples and all positions
      (see _wanda_score: why per channel), the same for every output channel and kernel position;
    normalisation layers (y = gamma * x_hat + beta): gamma_j scores |gamma_j| ||x_hat_j||, read from
      the output as ||y_j - beta_j|| (LayerNorm, RMSNorm and *Norm classes: the trailing dims; BatchNorm,
      InstanceNorm, GroupNorm: dim 1);
    LSTM cells written with plain ops (a module holding weight_ih and weight_hh, as modmask.models.LSTM's
      cells, which have no forward of their own): a torch-function mode watches the products the
      weights take part in (x @ W.t()), so weight_ih sees the layer input and weight_hh the previous
      hidden state h_{t-1} (h_0 included), exactly as the code computes them;
    a bias: the constant input 1 at every row it is added to, |b| sqrt(rows).
  nn.LSTM / nn.GRU run fused kernels on their weights, and nn.MultiheadAttention reads its projections
  without calling them: their parameters are refused with a message (use 'magnitude' or 'taylor').
- taylor: |w * dL/dw|, the first-order Taylor estimate of the loss change when w is removed, with
  the loss gradient averaged over `batches`.
- random: uniform [0, 1) scores, so the top fraction is a uniformly random subset (per tensor: the
  random control matched per tensor).

Nothing of the model is changed: hooks and a torch-function mode only read what flows through it,
gradients are taken of detached tensors (the parameters' .grad and requires_grad stay as they were),
and in mode 'train' the buffers (BatchNorm's running statistics) are put back afterwards.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .batches import as_arguments, describe_output, to_device, unpack_batch, without_cache
from .masking import call_with_tensors, frozen_parameters, model_mode, parameter_slots, parameters_restored
from .selection import is_norm, owners, select_parameters

BASELINES = ("magnitude", "wanda", "taylor", "random")

WANDA_KINDS = ("nn.Linear", "Hugging Face Conv1D", "nn.Conv1d/2d/3d",
               "normalisation layers (LayerNorm, BatchNorm, GroupNorm, RMSNorm, any class named *Norm)",
               "LSTM cells written with plain ops (a module holding weight_ih and weight_hh, as modmask.models.LSTM)")


def importance(model: nn.Module, method: str, names: Sequence[str], batches: Iterable | None = None,
               loss_fn: Callable | None = None, *, seed: int = 0, mode: str = "eval",
               min_examples: int = 8) -> dict[str, torch.Tensor]:
    """parameter name -> [*shape] float32 scores on the CPU, higher = more important, for the named
    parameters (e.g. list(trained_mask.logits) or select_parameters(model)), in the order of `names`.

    method: one of BASELINES. batches (wanda, taylor): the data, as collect takes it ((inputs,
    targets) or a dict of keyword arguments), iterated once; together at least `min_examples`
    examples (dim 0 of the inputs). loss_fn(outputs, targets) -> scalar mean loss (taylor).
    seed: the random scores' generator. mode: the model's mode while the data runs ('eval': no dropout).
    Parameters on a GPU are scored there.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose one of {BASELINES}")
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    select_parameters(model, names)  # refuses unknown names (listing the model's) and an empty list
    if mode not in ("eval", "train"):
        raise ValueError(f"model mode must be 'eval' or 'train', not {mode!r}")
    params = dict(model.named_parameters())
    if method == "magnitude":
        return {n: params[n].detach().abs().float().cpu() for n in names}
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {n: torch.rand(params[n].shape, generator=generator) for n in names}
    if batches is None:
        raise ValueError(f"importance({method!r}) needs `batches`: the data whose "
                         f"{'input norms' if method == 'wanda' else 'loss gradients'} it measures (e.g. the "
                         f"evaluation batches); 'magnitude' and 'random' need none")
    if method == "wanda":
        return _wanda(model, names, batches, mode, min_examples)
    if loss_fn is None:
        raise ValueError("importance('taylor') needs `loss_fn(outputs, targets)`, the loss whose gradient it "
                         "measures (the task loss the mask was trained with)")
    return _taylor(model, names, batches, loss_fn, mode, min_examples)


# ---- running the data through the model ----

def _examples(args: tuple, kwargs: dict) -> int:
    """The batch size of one call's inputs: dim 0 of the first tensor with a batch dimension."""
    sizes = [a.shape[0] for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim()]
    return sizes[0] if sizes else 1


def _check_examples(count: int, method: str, min_examples: int) -> None:
    if count == 0:
        raise ValueError(f"importance({method!r}) got no batch: pass the data to measure on, e.g. a list "
                         f"of evaluation batches")
    if count < min_examples:
        raise ValueError(f"importance({method!r}) saw {count} example(s) in its batches, fewer than "
                         f"min_examples={min_examples}: its scores are statistics of the data, and so few "
                         f"examples give noise; pass more evaluation batches (or lower min_examples)")


def _inputs(model: nn.Module, batches: Iterable, method: str, min_examples: int) -> Iterator[tuple]:
    """(args, kwargs, targets) of every batch, on the model's device; raises at the end when the batches
    held fewer than min_examples examples (before the first batch when they are a list)."""
    if isinstance(batches, (list, tuple)):  # counted before any work
        _check_examples(sum(_examples(*as_arguments(unpack_batch(b)[0])) for b in batches), method, min_examples)
    device = next(model.parameters()).device
    count = 0
    for batch in batches:
        inputs, targets = unpack_batch(batch)
        args, kwargs = to_device(as_arguments(inputs), device)
        count += _examples(args, kwargs)
        yield args, without_cache(model, kwargs), to_device(targets, device)
    _check_examples(count, method, min_examples)


@contextlib.contextmanager
def _buffers_kept(model: nn.Module, mode: str):
    """In mode 'train' a forward updates BatchNorm's running statistics: put every buffer back after."""
    saved = [(b, b.clone()) for b in model.buffers()] if mode == "train" else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


# ---- wanda ----

def _kind(owner: nn.Module | None) -> str | None:
    """How wanda reads the inputs of this module's parameters, or None (unsupported)."""
    if isinstance(owner, nn.Linear):
        return "linear"
    if type(owner).__name__ == "Conv1D":  # Hugging Face's (GPT-2): weight [in, out], x @ W
        return "conv1d_hf"
    if isinstance(owner, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if is_norm(owner):
        return "norm"
    # nn.LSTM / nn.LSTMCell run fused kernels on flat weights: no product of theirs can be watched
    if (owner is not None and not isinstance(owner, (nn.RNNBase, nn.RNNCellBase))
            and {"weight_ih", "weight_hh"} <= set(owner._parameters)):
        return "cell"
    return None


class _Inputs:
    """What the scored parameters see: per weight, the sum over rows of each input feature squared
    (float64), and the dimension of the weight that feature runs along; per bias, the rows it is added to."""

    def __init__(self):
        self.squares: dict[str, torch.Tensor] = {}
        self.feature_dim: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.unreadable: dict[str, str] = {}

    def add_features(self, name: str, x: torch.Tensor, feature_dim: int | None = None) -> None:
        """x [..., F]: F features, every other dim a row."""
        squares = x.detach().float().pow(2).reshape(-1, x.shape[-1]).sum(0).double()
        self.squares[name] = self.squares[name] + squares if name in self.squares else squares
        if feature_dim is not None:
            if self.feature_dim.setdefault(name, feature_dim) != feature_dim:
                self.unreadable[name] = "multiplied both as W and as its transpose"

    def add_rows(self, name: str, rows: int) -> None:
        self.rows[name] = self.rows.get(name, 0) + rows


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _hook(kind: str, prefix: str, module: nn.Module, seen: _Inputs) -> Callable:
    """A forward hook that adds one call's inputs (or, for norms, outputs) to `seen`."""
    has_bias = isinstance(module._parameters.get("bias"), torch.Tensor)

    def linear(_, args, kwargs, output):  # nn.Linear x [..., in] and Conv1D x [..., in] alike
        x = _first_input(args, kwargs)
        seen.add_features(prefix + "weight", x)
        seen.add_rows(prefix + "bias", x.numel() // x.shape[-1])

    def conv(_, args, kwargs, output):  # x [B, C_in, *spatial] (or unbatched [C_in, *spatial])
        x = _first_input(args, kwargs)
        if x.dim() == len(module.kernel_size) + 1:
            x, output = x.unsqueeze(0), output.unsqueeze(0)
        seen.add_features(prefix + "weight", x.movedim(1, -1))
        seen.add_rows(prefix + "bias", output.numel() // output.shape[1])

    def norm(_, args, kwargs, output):
        # y = gamma * x_hat + beta, so |gamma_j| ||x_hat_j|| = ||y_j - beta_j||: read from the output,
        # without dividing by gamma (exact where gamma_j = 0 too)
        y = output[0] if isinstance(output, (tuple, list)) else output
        shape = (module._parameters.get("weight") if module._parameters.get("weight") is not None
                 else module._parameters["bias"]).shape
        channel_first = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm))
        z = y.movedim(1, -1) if channel_first and y.dim() > 1 else y  # channels last
        if tuple(z.shape[z.dim() - len(shape):]) != tuple(shape):
            seen.unreadable[prefix + "weight"] = seen.unreadable[prefix + "bias"] = (
                f"its output {tuple(y.shape)} does not end in its weight's shape {tuple(shape)}")
            return
        z = z.reshape(-1, *shape).float()
        if has_bias:
            z = z - module.bias.detach().float()
        seen.add_features(prefix + "weight", z.reshape(len(z), -1))
        seen.add_rows(prefix + "bias", len(z))

    return {"linear": linear, "conv1d_hf": linear, "conv": conv, "norm": norm}[kind]


_VIEWS = {"t", "transpose", "__get__", "permute"}  # a weight's transpose (or an attribute read) is not a use
_PRODUCTS = {"matmul", "__matmul__", "mm"}
_ADDS = {"add", "__add__", "__radd__"}


class _CellProducts(TorchFunctionMode):
    """Reads what the parameters of LSTM cells written with plain ops meet: a weight W [4H, I] in
    `x @ W.t()` (or W [I, 4H] in `x @ W`, or F.linear(x, W)) sees the features x [..., I] (the layer
    input for weight_ih, the previous hidden state h_{t-1} for weight_hh, whatever the code computes
    them from: dropout between layers and held states of finished sequences included); a bias added to
    a tensor sees one row per element of the sum divided by its size. Any other use is recorded as
    unreadable, so no score silently misses part of what a weight does."""

    def __init__(self, params: dict[str, torch.Tensor], seen: _Inputs):
        super().__init__()
        self.params, self.seen = params, seen
        self.names = {id(p): n for n, p in params.items()}

    def _weight(self, t) -> tuple[str, bool] | None:
        """(name, transposed) if t is a watched parameter or its transpose."""
        if not isinstance(t, torch.Tensor):
            return None
        if id(t) in self.names:
            return self.names[id(t)], False
        base = t._base
        if base is not None and id(base) in self.names and t.dim() == 2 and base.dim() == 2 \
                and t.stride() == base.stride()[::-1] and t.shape == base.shape[::-1]:
            return self.names[id(base)], True
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        used = [w for w in map(self._weight, (*args, *kwargs.values())) if w]
        if used:
            self._read(func, args, kwargs, used, out)
        return out

    def _read(self, func, args: tuple, kwargs: dict, used: list[tuple[str, bool]], out) -> None:
        what = getattr(func, "__name__", str(func))
        if what in _VIEWS:
            return
        if what in _PRODUCTS and len(args) == 2 and len(used) == 1 and self._weight(args[1]):
            name, transposed = used[0]  # x [..., F] @ W: F runs along W's dim 0 (along dim 1 for W.t())
            self.seen.add_features(name, args[0], 1 if transposed else 0)
            return
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            w, b = self._weight(weight), self._weight(args[2] if len(args) > 2 else kwargs.get("bias"))
            if not self._weight(x) and not (w and w[1]) and not (b and b[1]):
                if w:
                    self.seen.add_features(w[0], x, 1)  # W [out, in]
                if b:
                    self.seen.add_rows(b[0], x.numel() // x.shape[-1])
                return
        if what in _ADDS and len(used) == 1 and not used[0][1] and isinstance(out, torch.Tensor):
            name = used[0][0]
            if self.params[name].dim() == 1:  # a bias: one row per element of the sum over its size
                self.seen.add_rows(name, out.numel() // self.params[name].numel())
                return
        for name, _ in used:
            self.seen.unreadable.setdefault(name, f"used in {what}, which wanda cannot read")


def _wanda(model: nn.Module, names: list[str], batches: Iterable, mode: str, min_examples: int) -> dict:
    holders = owners(model)
    kinds = {n: _kind(holders.get(n)) for n in names}
    own = {n: n.rpartition(".")[2] for n in names}
    unsupported = [n for n in names if kinds[n] is None
                   or (kinds[n] != "cell" and own[n] not in ("weight", "bias"))]
    if unsupported:
        listed = ", ".join(f"{n} ({type(holders.get(n)).__name__})" for n in unsupported)
        raise ValueError(f"wanda cannot score {len(unsupported)} parameter(s): {listed}. It scores the parameters "
                         f"of {'; '.join(WANDA_KINDS)}. Use 'magnitude' or 'taylor' for those, or leave them out "
                         f"of `names`")
    params = dict(model.named_parameters())
    seen = _Inputs()
    modules = {}  # the modules whose hooks read their inputs: prefix -> (kind, module)
    for n in names:
        if kinds[n] != "cell":
            modules[n[:len(n) - len(own[n])]] = (kinds[n], holders[n])
    cells = {n: params[n] for n in names if kinds[n] == "cell"}
    handles = [module.register_forward_hook(_hook(kind, prefix, module, seen), with_kwargs=True)
               for prefix, (kind, module) in modules.items()]
    watch = _CellProducts(cells, seen) if cells else contextlib.nullcontext()
    try:
        with torch.no_grad(), model_mode(model, mode), _buffers_kept(model, mode):
            for args, kwargs, _ in _inputs(model, batches, "wanda", min_examples):
                with watch:
                    model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()

    missing = [n for n in names if (n not in seen.squares and n not in seen.rows) or n in seen.unreadable]
    if missing:
        why = ", ".join(f"{n} ({type(holders[n]).__name__}: "
                        f"{seen.unreadable.get(n, 'its module never ran on these batches')})" for n in missing)
        raise ValueError(f"wanda could not read the inputs of {why}; a module whose weights are read without "
                         f"its forward (e.g. nn.MultiheadAttention's out_proj) cannot be scored by its inputs: use "
                         f"'magnitude' or 'taylor' for those, or leave them out of `names`")
    return {n: _wanda_score(params[n].detach(), n, kinds[n], holders[n], seen).float().cpu() for n in names}


def _wanda_score(p: torch.Tensor, name: str, kind: str, owner: nn.Module, seen: _Inputs) -> torch.Tensor:
    """|w| * the norm of what w multiplies, in the parameter's shape."""
    p = p.abs().double()
    if name not in seen.squares:  # a bias: its input is the constant 1 at every row
        return p * math.sqrt(seen.rows[name])
    norms = seen.squares[name].sqrt().to(p.device)
    if kind == "norm":  # already |gamma_j| ||x_hat_j||
        return norms.view(p.shape)
    if kind == "conv":
        # A convolution is translation-equivariant: every kernel position of a filter multiplies the
        # same input channel at shifted positions, which see that channel's statistics (up to the
        # borders), so every weight from input channel j gets ||x_j|| over examples and positions.
        groups, out = owner.groups, p.shape[0]
        per_group = norms.view(groups, -1).repeat_interleave(out // groups, dim=0)  # [out, in / groups]
        return p * per_group.view(*per_group.shape, *[1] * (p.dim() - 2))
    feature_dim = seen.feature_dim.get(name, 0 if kind == "conv1d_hf" else 1)  # Linear: [out, in]; Conv1D: [in, out]
    return p * (norms[None, :] if feature_dim == 1 else norms[:, None])


# ---- taylor ----

def _taylor(model: nn.Module, names: list[str], batches: Iterable, loss_fn: Callable, mode: str,
            min_examples: int) -> dict:
    """|w * g|, g the mean over batches of each batch's loss gradient, taken of detached tensors in a
    functional call: the model's parameters get no .grad and keep their requires_grad."""
    tensors = frozen_parameters(model)
    leaves = [tensors[n].requires_grad_() for n in names]  # new tensor objects: the parameters' flags stay
    slots = parameter_slots(model)
    total = [torch.zeros_like(leaf, dtype=torch.float32) for leaf in leaves]
    count = 0
    with torch.enable_grad(), model_mode(model, mode), _buffers_kept(model, mode), parameters_restored(model):
        for args, kwargs, targets in _inputs(model, batches, "taylor", min_examples):
            outputs = call_with_tensors(model, slots, tensors, args, kwargs)
            loss = loss_fn(outputs, targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                raise ValueError(f"loss_fn must return a scalar tensor computed from the model's outputs (the "
                                 f"mean loss of the batch); got {describe_output(loss)}"
                                 f"{'' if not isinstance(loss, torch.Tensor) else ' without a gradient'}")
            grads = torch.autograd.grad(loss.reshape(()), leaves, allow_unused=True)
            for acc, grad in zip(total, grads):
                if grad is not None:  # a parameter the loss does not depend on: gradient 0
                    acc += grad.float()
            count += 1
    return {n: (tensors[n].detach().float() * acc / count).abs().cpu() for n, acc in zip(names, total)}
