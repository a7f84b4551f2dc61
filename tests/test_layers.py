"""The core imports torch and its helpers only, never the layers above it (DESIGN.md)."""

import ast
from pathlib import Path

import modmask

CORE = Path(modmask.__file__).parent / "core"
ALLOWED = {"torch", "numpy", "safetensors", "tqdm", "__future__"}
STDLIB_OK = {"contextlib", "dataclasses", "fnmatch", "functools", "inspect", "itertools", "json", "logging",
             "math", "os", "pathlib", "statistics", "typing", "collections"}


def test_core_imports_nothing_from_the_layers_above():
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must stay inside core
                    assert node.level == 1, f"{path.name} imports from outside core"
                    continue
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in ALLOWED | STDLIB_OK, f"{path.name} imports {root}"
