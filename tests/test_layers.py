"""Dependencies point down only (docs/architecture.md): every module's imports of modmask are
checked against its layer, config.py imports the standard library only, the core imports torch and
its helpers only, and `import modmask` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import modmask

PACKAGE = Path(modmask.__file__).parent
# layer -> the layers it may import (besides itself)
BELOW_EXPERIMENTS = {"core", "models", "data", "runs", "config", "tracking", "allocator"}
ALLOWED = {
    "config": set(),  # the ground floor: config parsing, build/resolve, flatten/nest
    "core": {"config"},
    "models": set(),
    "data": set(),
    "runs": {"core", "config"},  # run directories, mask stages, the generic study
    "tracking": set(), "allocator": set(),
    "experiments": BELOW_EXPERIMENTS,  # the case studies
    "reporting": {"core", "runs", "config"},
    "launch": BELOW_EXPERIMENTS | {"experiments", "reporting"},  # catalogue, runner, sweep, placement
    "cli": BELOW_EXPERIMENTS | {"experiments", "reporting", "launch"},
    "study": {"runs", "reporting"},  # run_study: the generic study (runs.study) with its report
    "__init__": {"core", "study"},
}
CORE_THIRD_PARTY = {"torch", "numpy", "safetensors", "tqdm"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path, package: tuple[str, ...] | None = None):
    """(root package or modmask layer, is_modmask) of every import in a file; `package`: the
    file's package (default: from its place under PACKAGE), e.g. ('modmask', 'core')."""
    package = package or path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                yield (parts[1], True) if parts[0] == "modmask" and len(parts) > 1 else (parts[0], False)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [alias.name for alias in node.names][:1])
            else:
                parts = node.module.split(".")
            if parts[0] == "modmask":
                yield (parts[1] if len(parts) > 1 else "__init__"), True
            else:
                yield parts[0], False


def test_every_layer_imports_only_the_layers_below_it():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        for target, internal in _imports(path):
            if internal and target != layer and target not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(PACKAGE)} imports modmask.{target}")
    assert not problems, "\n".join(problems)


def test_core_imports_torch_and_its_helpers_only():
    for path in (PACKAGE / "core").glob("*.py"):
        for target, internal in _imports(path):
            assert internal or target in CORE_THIRD_PARTY | STDLIB, f"{path.name} imports {target}"


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    """The test above would pass vacuously if _imports found nothing."""
    found = set(_imports(PACKAGE / "launch" / "runner.py"))
    assert ("runs", True) in found and ("tracking", True) in found and ("torch", False) in found
    # the catalogue names the experiments and their reports by import, not by string
    found = set(_imports(PACKAGE / "launch" / "catalogue.py"))
    assert ("experiments", True) in found and ("reporting", True) in found
    (tmp_path / "absolute.py").write_text("import modmask.runs.stage\nfrom modmask.config import build\nimport numpy\n")
    assert set(_imports(tmp_path / "absolute.py", ("modmask", "experiments"))) == {
        ("runs", True), ("config", True), ("numpy", False)}


def test_every_module_has_a_layer_and_every_layer_a_module():
    layers = {_layer(path) for path in PACKAGE.rglob("*.py")}
    assert layers == set(ALLOWED), f"in the package, not in ALLOWED: {layers - set(ALLOWED)}; " \
                                   f"in ALLOWED, not in the package: {set(ALLOWED) - layers}"
    assert all(allowed <= set(ALLOWED) for allowed in ALLOWED.values())


def test_the_config_layer_imports_the_standard_library_only():
    for target, internal in _imports(PACKAGE / "config.py"):
        assert not internal and target in STDLIB, f"config.py imports {target}"


def test_the_core_never_imports_transformers():
    for path in (PACKAGE / "core").glob("*.py"):
        assert "transformers" not in {t for t, internal in _imports(path) if not internal}, path.name


def test_import_modmask_is_light():
    code = "import sys, modmask; print(sorted(m for m in ('matplotlib', 'ray', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
