"""Steering a mask's size while it trains, and watching whether it has settled (issue 26).

Target density. The paper's regulariser beta / b * sum(logits) pushes every logit down with one
constant force, so the size a mask ends at is an accident of beta x lr x steps. With
`MaskConfig.target_density` that force becomes the multiplier lambda of a constraint, expected
density = goal, where the expected density of a group of weights is the mean of sigmoid(logits)
(the probability that a weight is sampled as kept). lambda starts at beta (1e-4 if beta is 0) and
follows the dual (multiplier) update of the constraint in log space,

    lambda <- lambda * exp(rate * clamp((expected - goal) / goal, -1, 1)),

so it grows while the mask is too dense and shrinks while it is too sparse, by at most a factor
e^rate per step whatever its scale (the force needed differs by orders of magnitude between models
and densities). Under Adam a logit whose task gradient is weaker than lambda / b falls by about lr
per step and one whose task gradient is stronger rises: lambda is a threshold on how much a weight
matters, and the constraint settles where `goal` of the weights matter more than it.

Two choices keep the multiplier from racing the logits, which need about init_logit / lr steps to
change sign: rate = lr / (2 init_logit) (an e-fold in half that time), and a goal that falls from
the starting density sigmoid(init_logit) to the target along a cubic over the first half of the
steps (as gradual pruning does), so lambda tracks a slowly moving goal. Tried and dropped (docs/
deviations.md): a rate that scales with 1/steps (lambda overshoots a hundredfold and the function's
weights never come back) and an exact projection that shifts the logits so the expected density is
the goal at every step (all logits fall together and the mask collapses to a uniform low keep
probability). lambda is never negative: it cannot add weights the function does not need, so a target
above the function's natural size ends below it, and `diagnose` says so. `target_density` is a
fraction of all masked weights (one multiplier), or with `target_per_tensor` the same fraction of
every masked tensor (one multiplier each).

Convergence. Every logged step records the fraction of mask decisions (logit > 0) that flipped
since the previous log and the fraction still undecided (keep probability between 0.1 and 0.9);
`diagnose` turns the end of a stage's history into a verdict with the fix.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

UNDECIDED = math.log(9.0)  # |logit| below this: keep probability between 0.1 and 0.9
SETTLED_FLIPS = 1e-3  # at most this fraction of decisions flipped per log interval: the mask has settled
SETTLED_LOGS = 3  # ... over this many log intervals at the end
LOST_RATIO, LOST_MARGIN = 3.0, 0.25  # task loss above 3x the full model's and 0.25 above it: the function is lost
ON_TARGET = 0.1  # relative distance from the target density a mask may end at
WARMUP = 0.5  # the goal reaches the target density after this fraction of the steps


def target_groups(target: float | None, per_tensor: bool, count: int) -> list[tuple[list[int], float]]:
    """(tensor indices, target) of each constrained group of `count` tensors: one group of all of
    them, or one per tensor (per_tensor); [] without a target."""
    if target is None:
        return []
    return [([i], float(target)) for i in range(count)] if per_tensor else [(list(range(count)), float(target))]


class DensityControl:
    """The multipliers of M masks' density constraints: each tensor's weight in the regulariser
    (the multiplier of its group, or beta where it has no target) and their update after a step."""

    def __init__(self, configs: Sequence, sizes: Sequence[int], device: torch.device,
                 entry_weights: Sequence[float] | None = None):
        self.groups = [target_groups(c.target_density, c.target_per_tensor, len(sizes)) for c in configs]
        # a tensor's entries stand for entry_weights weights each (a unit mask's logit: the weights it covers)
        self.entry_weights = torch.tensor(entry_weights or [1.0] * len(sizes), dtype=torch.float64)
        self.sizes = torch.tensor(sizes, dtype=torch.float64) * self.entry_weights
        self.rates = [c.lr / (2 * max(abs(c.init_logit), 1.0)) for c in configs]
        self.start = [1 / (1 + math.exp(-c.init_logit)) for c in configs]
        self.warmup = [c.steps * WARMUP for c in configs]
        self.betas = [c.beta for c in configs]
        self.multipliers = [torch.full((len(g),), c.beta if c.beta > 0 else 1e-4, dtype=torch.float64)
                            for g, c in zip(self.groups, configs)]
        self.device = device

    @property
    def active(self) -> bool:
        return any(self.groups)

    def coefficients(self) -> torch.Tensor:
        """[M, T] the regulariser's weight of each mask's tensors (before dividing by the batch size)."""
        coef = torch.tensor([[b] * len(self.sizes) for b in self.betas], dtype=torch.float64)
        for m, groups in enumerate(self.groups):
            for (indices, _), multiplier in zip(groups, self.multipliers[m]):
                coef[m, indices] = multiplier
        return coef.to(self.device, torch.float32)

    def goal(self, m: int, target: float, step: int) -> float:
        """Mask m's goal after `step` updates: from the starting density down to `target` along a
        cubic over the first WARMUP of the steps, then `target`."""
        left = max(0.0, 1.0 - step / self.warmup[m]) if self.warmup[m] else 0.0
        return target + (max(self.start[m], target) - target) * left ** 3

    @torch.no_grad()
    def expected(self, logits: Sequence[torch.Tensor]) -> list[list[float]]:
        """Each mask's expected density in each of its groups, mean sigmoid(logits) over the group."""
        kept = torch.stack([torch.sigmoid(l.detach().float()).flatten(1).sum(1, dtype=torch.float64)
                            for l in logits], 1).cpu() * self.entry_weights  # [M, T] weights expected kept
        return [[float(kept[m, i].sum() / self.sizes[i].sum()) for i, _ in groups]
                for m, groups in enumerate(self.groups)]

    def update(self, logits: Sequence[torch.Tensor], step: int) -> None:
        """One multiplier step of every constraint, from the logits after `step` updates."""
        for m, densities in enumerate(self.expected(logits)):
            for g, (density, (_, target)) in enumerate(zip(densities, self.groups[m])):
                goal = self.goal(m, target, step)
                self.multipliers[m][g] *= math.exp(self.rates[m] * min(max((density - goal) / goal, -1.0), 1.0))

    def record(self, m: int, logits: Sequence[torch.Tensor]) -> dict:
        """What a log line shows of mask m's constraint (nothing without one)."""
        if not self.groups[m]:
            return {}
        expected, multipliers = self.expected(logits)[m], [float(x) for x in self.multipliers[m]]
        return {"expected_density": expected[0] if len(expected) == 1 else expected,
                "multiplier": multipliers[0] if len(multipliers) == 1 else multipliers}

    def state_dict(self) -> list[torch.Tensor]:
        return [m.clone() for m in self.multipliers]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        self.multipliers = [m.clone() for m in state]


class Decisions:
    """The last logged decisions (logit > 0) of each mask, to count flips between logs."""

    def __init__(self, logits: Sequence[torch.Tensor]):
        self.previous = self._current(logits)

    @staticmethod
    def _current(logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([l.detach().flatten(1) > 0 for l in logits], 1)  # [M, N]

    def record(self, logits: Sequence[torch.Tensor]) -> list[dict]:
        """Per mask {"flipped", "undecided"}: the fraction of decisions changed since the last
        record, and the fraction of keep probabilities between 0.1 and 0.9."""
        current = self._current(logits)
        flipped = (current != self.previous).float().mean(1).tolist()
        undecided = torch.cat([(l.detach().flatten(1).abs() < UNDECIDED) for l in logits], 1).float().mean(1).tolist()
        self.previous = current
        return [{"flipped": f, "undecided": u} for f, u in zip(flipped, undecided)]


def settled(history: Sequence[dict], logs: int = SETTLED_LOGS) -> bool:
    """Whether the last `logs` log intervals each flipped at most SETTLED_FLIPS of the decisions."""
    recent = [r["flipped"] for r in history if "flipped" in r][-logs:]
    return len(recent) == logs and max(recent) <= SETTLED_FLIPS


def diagnose(history: Sequence[dict], full_loss: float | None, target: float | None = None) -> dict:
    """A stage's verdict on one mask from its logged history: settled or not, on its target
    density or not, its function kept or lost (task loss against the full model's on the same
    data), each problem with its fix in `messages`."""
    if not history:
        return {"messages": ["no step was logged"]}
    last = history[-1]
    result = {"steps": last["step"] + 1, "density": last["density"], "flipped": last.get("flipped"),
              "undecided": last.get("undecided"), "settled": settled(history), "loss": last["loss"],
              "full_loss": full_loss, "target_density": target}
    messages = []
    recent = [r.get("flipped") or 0.0 for r in history][-SETTLED_LOGS:]
    if len(recent) < SETTLED_LOGS:
        messages.append(f"too few logged steps ({len(recent)}) to judge whether the mask settled: train longer "
                        f"(mask.steps) or log more often")
    elif not result["settled"]:
        messages.append(f"not settled: up to {100 * max(recent):.2f}% of the decisions flipped per log interval over "
                        f"the last {len(recent)} (settled: at most {100 * SETTLED_FLIPS:g}%; "
                        f"{100 * (last.get('undecided') or 0):.1f}% undecided); train longer (mask.steps) or with a "
                        f"higher mask.lr")
    if full_loss is not None and last["loss"] > LOST_RATIO * full_loss and last["loss"] - full_loss > LOST_MARGIN:
        result["lost_function"] = True
        fix = ("ask for a higher mask.target_density (the function needs more weights)" if target is not None
               else "use a lower mask.beta or ask for a size with mask.target_density")
        messages.append(f"lost its function: task loss {last['loss']:.3g} against {full_loss:.3g} for the full "
                        f"model; {fix}")
    else:
        result["lost_function"] = False
    if target is not None:
        off = abs(last["density"] - target) / target
        result["on_target"] = off <= ON_TARGET
        if off > ON_TARGET:
            messages.append(f"ended at density {last['density']:.4f}, {100 * off:.0f}% from the target {target:g}"
                            + ("; the function may need fewer weights than asked" if last["density"] < target
                               else "; train longer (mask.steps)"))
    result["messages"] = messages
    return result
