"""Which parameters of a model get a mask (paper §1.5).

Default, as in the paper: every weight (a parameter with two or more dimensions) of every module
except embeddings, plus the affine parameters of normalisation layers; biases only when asked
(`biases=True`; the paper masks them for CIFAR and permuted MNIST only). A user can instead give
a glob pattern, a list of names, or a predicate `(name, parameter) -> bool`.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Union

import torch
from torch import nn

ParameterFilter = Union[str, Iterable[str], Callable[[str, nn.Parameter], bool], None]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """parameter name -> the module that holds it."""
    owners = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owners[f"{module_name}.{param_name}" if module_name else param_name] = module
    return owners


def default_filter(biases: bool = False, norms: bool = True) -> Callable[[str, nn.Parameter], bool]:
    """The paper's rule as a predicate; see the module docstring."""

    def keep(name: str, parameter: nn.Parameter, owner: nn.Module | None = None) -> bool:
        if isinstance(owner, nn.Embedding) or "embedding" in name.lower():
            return False
        if isinstance(owner, _NORMS):
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
        owners = _owners(model)
        rule = default_filter(biases=biases, norms=norms)
        chosen = [n for n, p in named.items() if rule(n, p, owners.get(n))]
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
