"""What every parameter multiplies: the inputs of its layer, read while the unmodified model runs on
some batches (forward hooks and a torch-function mode only read what flows through the model).

Two readers of one record (`Inputs`): wanda (baselines.py) scores |w_ij| ||x_j|| from each input
feature's sum of squares, and mean removal (removal.py) replaces a removed w_ij x_j by w_ij E[x_j]
from its sum. What x is, by the module that holds the parameter (a layer called twice counts both calls):

  nn.Linear W [out, in] and Hugging Face's Conv1D W [in, out] (x @ W): the layer input's last dim;
  nn.Conv1d/2d/3d W [out, in / groups, *kernel]: per input channel, over examples and all positions
    (a convolution is translation-equivariant: every kernel position of a filter multiplies the same
    input channel at shifted positions, which see that channel's statistics up to the borders);
  nn.Embedding W [V, d]: the one-hot of the ids (feature t counts the rows that look up id t);
  normalisation layers (y = gamma * x_hat + beta): gamma_j sees x_hat_j, recorded as gamma_j x_hat_j,
    read from the output as y_j - beta_j (LayerNorm, RMSNorm and *Norm classes: the trailing dims;
    BatchNorm, InstanceNorm, GroupNorm: dim 1), so no division by gamma is needed;
  LSTM cells written with plain ops (a module holding weight_ih and weight_hh, as modmask.models.LSTM's
    cells, which have no forward of their own): a torch-function mode watches the products the
    weights take part in (x @ W.t()), so weight_ih sees the layer input and weight_hh the previous
    hidden state h_{t-1} (h_0 included), exactly as the code computes them;
  a bias: the constant input 1 at every row it is added to.

nn.LSTM / nn.GRU run fused kernels on their weights, and nn.MultiheadAttention reads its projections
without calling them: their parameters are refused with a message that names them.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .batches import as_arguments, to_device, unpack_batch, without_cache
from .selection import is_conv1d, is_norm, owners

KINDS = ("nn.Linear", "Hugging Face Conv1D", "nn.Conv1d/2d/3d", "nn.Embedding",
         "normalisation layers (LayerNorm, BatchNorm, GroupNorm, RMSNorm, any class named *Norm)",
         "LSTM cells written with plain ops (a module holding weight_ih and weight_hh, as modmask.models.LSTM)")


# ---- running the data through the model ----

def examples(args: tuple, kwargs: dict) -> int:
    """The batch size of one call's inputs: dim 0 of the first tensor with a batch dimension."""
    sizes = [a.shape[0] for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim()]
    return sizes[0] if sizes else 1


def _check_examples(count: int, what: str, min_examples: int) -> None:
    if count == 0:
        raise ValueError(f"{what} got no batch: pass the data to measure on, e.g. a list of evaluation batches")
    if count < min_examples:
        raise ValueError(f"{what} saw {count} example(s) in its batches, fewer than min_examples={min_examples}: "
                         f"it reads statistics of the data, and so few examples give noise; pass more "
                         f"batches (or lower min_examples)")


def model_inputs(model: nn.Module, batches: Iterable, what: str, min_examples: int) -> Iterator[tuple]:
    """(args, kwargs, targets) of every batch, on the model's device; raises at the end when the batches
    held fewer than min_examples examples (before the first batch when they are a list). `what` names
    the caller in the error."""
    if isinstance(batches, (list, tuple)):  # counted before any work
        _check_examples(sum(examples(*as_arguments(unpack_batch(b)[0])) for b in batches), what, min_examples)
    device = next(model.parameters()).device
    count = 0
    for batch in batches:
        inputs, targets = unpack_batch(batch)
        args, kwargs = to_device(as_arguments(inputs), device)
        count += examples(args, kwargs)
        yield args, without_cache(model, kwargs), to_device(targets, device)
    _check_examples(count, what, min_examples)


@contextlib.contextmanager
def buffers_kept(model: nn.Module, mode: str):
    """In mode 'train' a forward updates BatchNorm's running statistics: put every buffer back after."""
    saved = [(b, b.clone()) for b in model.buffers()] if mode == "train" else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


# ---- what each parameter sees ----

def kind_of(owner: nn.Module | None) -> str | None:
    """How the inputs of this module's parameters are read, or None (unsupported)."""
    if isinstance(owner, nn.Linear):
        return "linear"
    if is_conv1d(owner):  # Hugging Face's (GPT-2): weight [in, out], x @ W
        return "conv1d_hf"
    if isinstance(owner, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(owner, nn.Embedding):
        return "embedding"
    if is_norm(owner):
        return "norm"
    # nn.LSTM / nn.LSTMCell run fused kernels on flat weights: no product of theirs can be watched
    if (owner is not None and not isinstance(owner, (nn.RNNBase, nn.RNNCellBase))
            and {"weight_ih", "weight_hh"} <= set(owner._parameters)):
        return "cell"
    return None


class Inputs:
    """What the read parameters see: per weight, the sum (and sum of squares) over rows of each input
    feature (float64) and the dimension of the weight that feature runs along; per parameter, the rows
    seen (for a bias: the rows it is added to, its input being 1)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.squares: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.feature_dim: dict[str, int] = {}
        self.unreadable: dict[str, str] = {}

    def add_features(self, name: str, x: torch.Tensor, feature_dim: int | None = None) -> None:
        """x [..., F]: F features, every other dim a row."""
        x = x.detach().float().reshape(-1, x.shape[-1])
        self._add(name, x.sum(0).double(), x.pow(2).sum(0).double(), len(x), feature_dim)

    def add_counts(self, name: str, ids: torch.Tensor, features: int, feature_dim: int) -> None:
        """Integer ids, each the one-hot row of `features` features."""
        counts = torch.bincount(ids.detach().reshape(-1).long(), minlength=features).double()
        self._add(name, counts, counts, ids.numel(), feature_dim)

    def _add(self, name: str, sums, squares, rows: int, feature_dim: int | None) -> None:
        for record, value in ((self.sums, sums), (self.squares, squares)):
            record[name] = record[name] + value if name in record else value
        self.add_rows(name, rows)
        if feature_dim is not None and self.feature_dim.setdefault(name, feature_dim) != feature_dim:
            self.unreadable[name] = "multiplied both as W and as its transpose"

    def add_rows(self, name: str, rows: int) -> None:
        self.rows[name] = self.rows.get(name, 0) + rows

    def mean(self, name: str) -> torch.Tensor:
        """[F] float64: the mean of each input feature over the rows seen."""
        return self.sums[name] / self.rows[name]


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _hook(kind: str, prefix: str, module: nn.Module, seen: Inputs) -> Callable:
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

    def embedding(_, args, kwargs, output):  # ids [...] -> rows of W [V, d]
        seen.add_counts(prefix + "weight", _first_input(args, kwargs), module.num_embeddings, 0)

    return {"linear": linear, "conv1d_hf": linear, "conv": conv, "norm": norm, "embedding": embedding}[kind]


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

    def __init__(self, params: dict[str, torch.Tensor], seen: Inputs):
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
            self.seen.unreadable.setdefault(name, f"used in {what}, which modmask cannot read")


def read_inputs(model: nn.Module, names: Sequence[str], batches: Iterable, *, mode: str = "eval",
                min_examples: int = 1, what: str = "reading the layers' inputs", fix: str = "") -> Inputs:
    """Run the unmodified model on `batches` (no gradients; in mode 'train' the buffers are put back)
    and record what each named parameter multiplies. A parameter of no supported kind, or one whose
    input cannot be read on these batches, is refused by name with the supported kinds and `fix`."""
    from .masking import fused_attention_disabled, model_mode  # (masking calls removal, which reads here)

    holders = owners(model)
    kinds = {n: kind_of(holders.get(n)) for n in names}
    own = {n: n.rpartition(".")[2] for n in names}
    unsupported = [n for n in names if kinds[n] is None
                   or (kinds[n] != "cell" and own[n] not in ("weight", "bias"))]
    if unsupported:
        listed = ", ".join(f"{n} ({type(holders.get(n)).__name__})" for n in unsupported)
        raise ValueError(f"{what}: modmask cannot tell what {len(unsupported)} parameter(s) multiply: {listed}. It "
                         f"reads the inputs of the parameters of {'; '.join(KINDS)}{fix}")
    params = dict(model.named_parameters())
    seen = Inputs()
    modules = {}  # the modules whose hooks read their inputs: prefix -> (kind, module)
    for n in names:
        if kinds[n] != "cell":
            modules[n[:len(n) - len(own[n])]] = (kinds[n], holders[n])
    cells = {n: params[n] for n in names if kinds[n] == "cell"}
    handles = [module.register_forward_hook(_hook(kind, prefix, module, seen), with_kwargs=True)
               for prefix, (kind, module) in modules.items()]
    watch = _CellProducts(cells, seen) if cells else contextlib.nullcontext()
    try:
        with torch.no_grad(), model_mode(model, mode), buffers_kept(model, mode), fused_attention_disabled():
            for args, kwargs, _ in model_inputs(model, batches, what, min_examples):
                with watch:
                    model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in seen.rows or n in seen.unreadable]
    if missing:
        why = ", ".join(f"{n} ({type(holders[n]).__name__}: "
                        f"{seen.unreadable.get(n, 'its module never ran on these batches')})" for n in missing)
        raise ValueError(f"{what}: could not read the inputs of {why}; a module whose weights are read without "
                         f"its forward (e.g. nn.MultiheadAttention's out_proj) cannot be read{fix}")
    return seen
