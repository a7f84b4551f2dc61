"""DeepMind Mathematics examples from DeepMind's own generator (PyPI `mathematics-dataset==1.0.1`).

As released, the package does not import with current sympy and numpy (`../shared/datasets/SOURCES.md`):
`sample/polynomials.py` imports `base_solution_linear` from a sympy module that moved, and calls
`ndarray.itemset` and `np.object`, both gone in numpy 2. Nobody should have to edit site-packages,
so `load_generator` reads that one file's source, applies the replacements below (each must match
exactly once, so a different package version fails loudly instead of half-working) and registers
the patched module before anything of the package imports it.

`generate` writes the released v1.0 layout (`<out>/<difficulty>/<module>.txt`, question and answer
on alternate lines) with the package's own difficulty ranges and length limits, seeded, so the
reader in `dm_math.py` handles generated and downloaded data alike.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import random
import sys
import zlib
from pathlib import Path

import numpy as np

PACKAGE = "mathematics_dataset"
PATCHED_MODULE = f"{PACKAGE}.sample.polynomials"
PATCHES = (
    ("from sympy.solvers.diophantine import base_solution_linear",
     "from sympy.solvers.diophantine.diophantine import base_solution_linear"),
    ("coeffs.itemset(index, value)", "coeffs[index] = value"),
    ("expanded_coefficients.itemset(power, coeffs)", "expanded_coefficients[power] = coeffs"),
    ("dtype=np.object)", "dtype=object)"),
)
log = logging.getLogger(__name__)
TRAIN_DIFFICULTIES = ("train-easy", "train-medium", "train-hard")
TEST_REGIMES = ("interpolate", "extrapolate")


def _patched_source(source: str, origin: str) -> str:
    for old, new in PATCHES:
        if old not in source:
            raise ImportError(f"{origin}: expected {old!r}; modmask's compatibility patch is written for "
                              f"mathematics-dataset==1.0.1 (pip install 'mathematics-dataset==1.0.1')")
        source = source.replace(old, new)
    return source


def load_generator():
    """Import mathematics_dataset with the compatibility patch; returns its `modules` module."""
    if PATCHED_MODULE not in sys.modules:
        spec = importlib.util.find_spec(PATCHED_MODULE) if importlib.util.find_spec(PACKAGE) else None
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError("generating DeepMind Mathematics data needs DeepMind's generator: "
                                      "pip install 'modmask[math]' (or give the released files with "
                                      "--set data=PATH)")
        source = _patched_source(Path(spec.origin).read_text(), spec.origin)
        module = importlib.util.module_from_spec(spec)
        sys.modules[PATCHED_MODULE] = module
        try:
            exec(compile(source, spec.origin, "exec"), module.__dict__)
        except BaseException:
            del sys.modules[PATCHED_MODULE]
            raise
    return importlib.import_module(f"{PACKAGE}.modules.modules")


def _entropy_range(level: int, levels: int):
    """The generator's difficulty: the `level`-th of `levels` equal parts of each entropy range."""
    def restrict(range_):
        low, high = range_
        return low + (high - low) * level / levels, low + (high - low) * (level + 1) / levels
    return restrict


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}__{key}" if prefix else key
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def regime_generators(module: str) -> dict:
    """{regime: zero-argument callable returning a Problem} for one module, e.g. 'comparison__sort'."""
    modules = load_generator()
    trees = {name: modules.train(_entropy_range(level, 3)) for level, name in enumerate(TRAIN_DIFFICULTIES)}
    trees |= {"interpolate": modules.test(), "extrapolate": modules.test_extra()}
    found = {}
    for regime, tree in trees.items():
        flat = _flatten(tree)
        if regime in TRAIN_DIFFICULTIES and module not in flat:
            raise KeyError(f"unknown DeepMind Mathematics module {module!r}; known: {', '.join(sorted(flat))}")
        if module in flat:  # not every module has an extrapolation variant
            found[regime] = flat[module]
    return found


def sample(problem_fn, count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (question, answer) pairs, dropping over-long ones as the generator does. Seeds
    Python's and numpy's global generators (the package draws from both; it takes no generator)
    and restores them, so nothing else sees a changed global state."""
    from mathematics_dataset import generate_settings as limits

    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        pairs = []
        while len(pairs) < count:
            problem = problem_fn()
            question, answer = str(problem.question), str(problem.answer)
            if len(question) <= limits.MAX_QUESTION_LENGTH and len(answer) <= limits.MAX_ANSWER_LENGTH:
                pairs.append((question, answer))
        return pairs
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def generate(module: str, out: str | Path, per_train: int, per_test: int, seed: int = 0,
             progress: bool = False) -> Path:
    """Write `per_train` examples of each train difficulty and `per_test` of each test regime of
    `module` into the released layout under `out`; files already there are kept (a cache).
    Returns `out`."""
    out = Path(out)
    generators = regime_generators(module)
    for regime, problem_fn in generators.items():
        path = out / regime / f"{module}.txt"
        if path.exists():
            continue
        count = per_train if regime in TRAIN_DIFFICULTIES else per_test
        if progress:
            log.info("generating %d %s examples of %s", count, regime, module)
        regime_seed = seed * 1_000_003 + zlib.crc32(f"{module}/{regime}".encode())
        pairs = sample(problem_fn, count, regime_seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text("".join(f"{q}\n{a}\n" for q, a in pairs))
        partial.replace(path)  # atomic: an interrupted generation leaves no half file behind
    return out
