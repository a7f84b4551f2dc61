"""How often a call that started in the trainer comes back to a modmask file it had already left.

    python scripts/call_trips.py

Follows every Python call made inside modmask while three masks of a small MLP train for two steps
(train_masks) and lists the calls whose callee lives in a file that is already on the call stack
below the caller's (the trip comes back to a file it had left), distinct by caller and callee. A
core whose calls go one way (trainer -> helpers, never back) lists none.
"""

import collections
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import modmask
from modmask import MaskConfig

try:
    from modmask import train_masks
except ImportError:  # modmask before the one trainer
    from modmask.core.joint import train_masks_jointly as train_masks

PACKAGE = Path(modmask.__file__).parent


def trips() -> tuple[collections.Counter, set]:
    """(caller -> callee) edges, by name, whose callee lives in a file that is already on the call
    stack below its caller's file: a call that goes back up (e.g. joint.py -> training.py -> joint.py)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    data = [[(torch.randn(8, 6), torch.randint(0, 3, (8,)))] for _ in range(3)]
    stack: list[tuple[str, str]] = []  # (file, function) of the modmask frames being run
    back: collections.Counter = collections.Counter()
    crossings: set[tuple[str, str]] = set()  # distinct calls from one file into another, by function

    def profile(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if PACKAGE not in path.parents or event not in ("call", "return"):
            return
        here = (str(path.relative_to(PACKAGE)), frame.f_code.co_name)
        if event == "return":
            if stack and stack[-1] == here:
                stack.pop()
            return
        files = [f for f, _ in stack]
        if stack and here[0] != files[-1]:
            crossings.add((":".join(stack[-1]), ":".join(here)))
        if stack and here[0] != files[-1] and here[0] in files:
            back[f"{':'.join(stack[-1])} -> {':'.join(here)}"] += 1
        stack.append(here)

    sys.setprofile(profile)
    try:
        train_masks(model, [(d, F.cross_entropy) for d in data], MaskConfig(steps=2), seeds=[0, 1, 2], progress=False)
    finally:
        sys.setprofile(None)
    return back, crossings


if __name__ == "__main__":
    edges, crossings = trips()
    for edge, count in edges.most_common():
        print(f"{count:4d}  {edge}")
    by_file = collections.Counter(edge.split(" -> ")[1].split(":")[0] for edge in edges)
    print(f"calls back into a file already on the stack: {len(edges)} distinct ({sum(edges.values())} in all); "
          f"by file: {dict(by_file)}")
    pairs = collections.Counter((a.split(":")[0], b.split(":")[0]) for a, b in crossings)
    both_ways = sorted({tuple(sorted(p)) for p in pairs if p[::-1] in pairs})
    print(f"distinct calls from one file into another: {len(crossings)}; file pairs that call each other: "
          f"{both_ways}")
