"""Every experiment's `smoke` presets end to end through the CLI, and their numbers in one file.

    python scripts/smoke_fingerprint.py record OUT_DIR      # runs, writes OUT_DIR/fingerprint.json
    python scripts/smoke_fingerprint.py compare A.json B.json

A behaviour-preserving refactor must give the same fingerprint before and after (timings and
paths left out). MNIST, SCAN and the generated DeepMind Mathematics data come from MODMASK_DATA
(e.g. ../shared/datasets); CIFAR-10 from a tiny class-sorted image folder made here.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

RUNS = [("addmul", "smoke", []), ("addmul", "smoke", ["model=lstm"]), ("doubleadd", "smoke", []),
        ("doubleadd", "smoke", ["model=lstm"]), ("sharing", "smoke", []), ("permuted_mnist", "smoke", []),
        ("cifar", "smoke", []), ("cifar", "smoke-resnet", []), ("scan", "smoke", []),
        ("scan", "smoke-transformer", []), ("dm_math", "smoke", [])]
SKIP = {"timings", "config", "data", "source"}


def image_folder(root: Path) -> Path:
    from PIL import Image
    from modmask.data.cifar import CLASSES

    rng = np.random.RandomState(0)
    for split, count in (("train", 60), ("test", 10)):
        for index, name in enumerate(CLASSES):
            folder = root / "CIFAR-10" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.randint(0, 80, (32, 32, 3))
                pixels[:, :, index % 3] += 25 * index
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in SKIP}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def record(out: Path) -> None:
    cifar = image_folder(out / "cifar-data")
    prints = {}
    for experiment, preset, sets in RUNS:
        name = "-".join([experiment, preset, *sets]).replace("=", "_")
        extra = [f"data={cifar}"] if experiment == "cifar" else []
        command = [sys.executable, "-m", "modmask.cli", "run", experiment, "--preset", preset, "--quiet",
                   "--out", str(out / name), *(a for s in [*sets, *extra] for a in ("--set", s))]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((out / name / "results.json").read_text())
        prints[name] = strip(summary.get("per_seed", summary))
        print(name, "done", flush=True)
    (out / "fingerprint.json").write_text(json.dumps(prints, indent=1))


def differences(a, b, where=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}/{key}: only in {'second' if key in b else 'first'}"
            else:
                yield from differences(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9):
            yield f"{where}: {a} != {b}"
    elif a != b:
        yield f"{where}: {str(a)[:80]} != {str(b)[:80]}"


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    else:
        first, second = (json.loads(Path(p).read_text()) for p in sys.argv[2:4])
        found = list(differences(first, second))
        print("\n".join(found) or "same numbers")
        sys.exit(1 if found else 0)
