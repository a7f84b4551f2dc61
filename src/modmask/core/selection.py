"""Which parameters of a model get a mask (paper §1.5).

Default, as in the paper: every weight (a parameter with two or more dimensions) of every module
except embeddings, plus the affine parameters of normalisation layers; biases only when asked
(`biases=True`; the paper masks them for CIFAR and permuted MNIST only). A user can instead give
a glob pattern, a list of names, or a predicate `(name, parameter) -> bool`.

Models the project did not write are recognised by duck typing (the core imports torch only):
embeddings are `nn.Embedding`s, parameters of a module whose class name says `Embed` (HF's
`ViTEmbeddings` position table and class token, TransformerLens's `Embed`/`PosEmbed`) and parameters
named `*embed*` (`pos_embedding`); an output layer tied to the input embedding is the same tensor,
which `named_parameters` lists once, under the embedding's name, so it is left out with it. Norms are
PyTorch's norm layers and any module whose class name ends in `Norm` (`LlamaRMSNorm`, `T5LayerNorm`).
HF's `Conv1D` (GPT-2) weights are [in, out] matrices and are masked like any other weight.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Mapping, Sequence, Union

from torch import nn

ParameterFilter = Union[str, Iterable[str], Callable[[str, nn.Parameter], bool], None]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def is_conv1d(module) -> bool:
    """Hugging Face's Conv1D (GPT-2): weight [in, out], y = x @ W + b (a Linear stores [out, in])."""
    return type(module).__name__ == "Conv1D"


def is_norm(module: nn.Module | None) -> bool:
    """A normalisation layer: one of PyTorch's (batch, instance, layer, group, RMS) or any module whose
    class name ends in `Norm` (`LlamaRMSNorm`, `T5LayerNorm`)."""
    return isinstance(module, _NORMS) or type(module).__name__.endswith("Norm")


def owners(model: nn.Module) -> dict[str, nn.Module]:
    """parameter name -> the module that holds it, by the names `named_parameters` gives (which a
    wrapper such as TransformerLens's TransformerBridge may choose differently from its module tree)."""
    found = {}
    for name, _ in model.named_parameters():
        path = name.rpartition(".")[0]
        try:
            found[name] = model.get_submodule(path)
        except AttributeError:  # a name that does not resolve: no owner, the rule goes by shape
            pass
    return found


def _is_embedding(name: str, owner: nn.Module | None) -> bool:
    """Lookup tables and learned positions (see the module docstring); `unembed` is an output layer."""
    own_name = name.rsplit(".", 1)[-1].lower()
    return (isinstance(owner, nn.Embedding) or "Embed" in type(owner).__name__
            or ("embed" in own_name and "unembed" not in own_name))


def default_filter(biases: bool = False, norms: bool = True) -> Callable[[str, nn.Parameter], bool]:
    """The paper's rule as a predicate; see the module docstring."""

    def keep(name: str, parameter: nn.Parameter, owner: nn.Module | None = None) -> bool:
        if _is_embedding(name, owner):
            return False
        if is_norm(owner):
            return norms
        if parameter.dim() >= 2:
            return True
        return biases

    return keep


def select_parameters(model: nn.Module, include: ParameterFilter = None, *, biases: bool = False,
                      norms: bool = True) -> list[str]:
    """Names of the parameters to mask, in the model's parameter order.

    include: None (the default rule), a glob such as "layers.*.weight", a list of exact names, or a
    predicate. Raises ValueError when a listed name does not exist or nothing is selected.
    """
    named = dict(model.named_parameters())
    if include is None:
        holders = owners(model)
        rule = default_filter(biases=biases, norms=norms)
        chosen = [n for n, p in named.items() if rule(n, p, holders.get(n))]
    elif isinstance(include, str):
        chosen = [n for n in named if fnmatch.fnmatchcase(n, include)]
    elif callable(include):
        chosen = [n for n, p in named.items() if include(n, p)]
    else:
        wanted = list(include)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; the model has: {list(named)}")
        chosen = [n for n in named if n in set(wanted)]
    if not chosen:
        raise ValueError(f"the parameter filter {include!r} selects no parameter of the model; "
                         f"its parameters are: {list(named)}")
    return chosen


def per_tensor(spec, names, allowed: Sequence[str], what: str) -> dict[str, str]:
    """name -> value of a setting given per tensor: one value for every tensor ("mean"), rules
    "pattern=value,...,default" read left to right (the first glob that matches a name wins; a bare
    value matches every name), or a mapping {pattern: value} in that order. Unknown values, and names
    no rule matches, are refused with the fix."""
    if isinstance(spec, str):
        rules = [tuple(part.split("=", 1)) if "=" in part else ("*", part) for part in spec.split(",") if part.strip()]
    elif isinstance(spec, Mapping):
        rules = list(spec.items())
    else:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, rules 'pattern=value,...,default' or a "
                         f"mapping of patterns to values, not {spec!r}")
    rules = [(pattern.strip(), value.strip()) for pattern, value in rules]
    bad = [value for _, value in rules if value not in allowed]
    if bad or not rules:
        raise ValueError(f"{what} {spec!r}: {bad or 'no value'} is not one of {', '.join(allowed)} (one value for "
                         f"every tensor, or rules 'pattern=value,...,default')")
    chosen = {}
    for name in names:
        value = next((v for pattern, v in rules if fnmatch.fnmatchcase(name, pattern)), None)
        if value is None:
            raise ValueError(f"{what} {spec!r} gives no value for {name!r}: end the rules with a default value "
                             f"(e.g. '...,{allowed[0]}')")
        chosen[name] = value
    return chosen
