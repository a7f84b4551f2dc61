"""Gumbel-sigmoid mask samples with a straight-through hard threshold (paper §1.2).

The paper draws two uniforms per weight and sample, forms logistic noise
n = -log(log U1 / log U0), and thresholds s = sigmoid((l + n) / tau) at 0.5. With tau = 1 the
same distribution needs only one uniform U: logit(U) is logistic noise, so

    s = sigmoid(l + logit(U)) = p U / (p U + (1 - p)(1 - U)),   p = sigmoid(l)
    h = 1[s > 0.5] = 1[U > 1 - p]

The hard sample is a comparison of a uniform with 1 - p (no log, no exp per sample), and the
straight-through gradient ds/dl = s (1 - s) is computed in the backward pass from the same U.
Uniforms are 16-bit integers (four per 64-bit draw), which halves the random bits the CPU has to
make; probabilities are then resolved to 2^-16 (a logit below about -11 is never sampled as kept,
which changes nothing: such weights are removed by the final mask anyway).

"""

from __future__ import annotations

import math

import numpy as np
import torch

UNIFORM_LEVELS = 65536  # 16-bit uniforms


class UniformSource:
    """Draws 16-bit uniforms as int16 tensors; seeded, independent of global RNG state.

    On the CPU the bits come from numpy's PCG64, about six times faster than `torch.rand` here;
    on other devices from a `torch.Generator` on that device (`host_bits=True`: from PCG64 on the
    host, copied over, so a GPU run sees the CPU's noise; slow, for tests).

    One step's noise is `reserve(k, shapes)`: it fixes the uniforms of all k samples of every
    tensor, but makes them only when asked, a range of samples at a time, so sample groups
    (`samples_per_pass`) hold one group's noise only and still see exactly the noise of one
    full draw.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu", host_bits: bool | None = None):
        self.device = torch.device(device)
        self.host_bits = self.device.type == "cpu" if host_bits is None else host_bits
        self._bits = np.random.PCG64(seed)  # on devices: one 64-bit seed per step from here
        if not self.host_bits:
            self._generator = torch.Generator(self.device)

    def reserve(self, k: int, shapes: list[tuple[int, ...]]) -> "StepNoise":
        """The noise of one step: int16 [k, *shape] for each shape, made on demand by `take`."""
        shapes = [tuple(s) for s in shapes]
        if self.host_bits:
            # PCG64 makes 64 bits per step; tensor i's uniforms are the 16-bit quarters of a run of
            # words, as one `random_raw` per tensor in order would give
            words = [(k * math.prod(s) + 3) // 4 for s in shapes]
            state = self._bits.state
            self._bits.advance(sum(words))
            return StepNoise(self, k, shapes, state=state, offsets=np.cumsum([0, *words[:-1]]).tolist())
        return StepNoise(self, k, shapes, base=int(self._bits.random_raw()) >> 1)

    def state(self) -> dict:
        """The position in the stream (for a checkpoint); `load_state` goes back to it."""
        return self._bits.state

    def load_state(self, state: dict) -> None:
        self._bits.state = state

    def draw(self, k: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Returns int16 [k, *shape]; value v stands for the uniform (v + 32768.5) / 65536."""
        return self.reserve(k, [shape]).take(0, 0, k)


class StepNoise:
    """The uniforms of one step (see UniformSource.reserve); `take(i, lo, hi)` makes samples
    lo..hi-1 of tensor i, the same values whichever ranges are asked for."""

    def __init__(self, source: UniformSource, k: int, shapes: list[tuple[int, ...]], state=None,
                 offsets=None, base: int = 0):
        self.source, self.k, self.shapes = source, k, shapes
        self._state, self._offsets, self._base = state, offsets, base

    def take(self, index: int, lo: int, hi: int) -> torch.Tensor:
        """int16 [hi - lo, *shapes[index]]."""
        shape, source = self.shapes[index], self.source
        if not 0 <= lo < hi <= self.k:
            raise ValueError(f"sample range {lo}..{hi} is outside 0..{self.k}")
        if not source.host_bits:
            # one seed per (step, tensor, sample): any range of samples is made alone, identically
            out = torch.empty(hi - lo, *shape, dtype=torch.int16, device=source.device)
            for j in range(lo, hi):
                source._generator.manual_seed((self._base + index * self.k + j) % 2**63)
                out[j - lo].random_(-32768, 32768, generator=source._generator)
            return out
        size = math.prod(shape)
        first, count = lo * size, (hi - lo) * size
        bits = np.random.PCG64(0)
        bits.state = self._state
        bits.advance(self._offsets[index] + first // 4)
        skip = first % 4
        raw = bits.random_raw((skip + count + 3) // 4).view(np.int16)[skip:skip + count]
        return torch.from_numpy(raw).view(hi - lo, *shape).to(source.device)


def uniform_values(uniforms: torch.Tensor) -> torch.Tensor:
    """int16 codes -> float uniforms in (0, 1), same shape."""
    return uniforms.float().add_(32768.5).mul_(1.0 / UNIFORM_LEVELS)


def keep_thresholds(logits: torch.Tensor) -> torch.Tensor:
    """int16 [n]: a sample keeps weight i iff its uniform code is > threshold i (U > 1 - p)."""
    one_minus_p = torch.sigmoid(-logits.detach())
    # code v stands for U = (v + 32768.5) / 65536, so U > 1 - p  <=>  v > floor((1 - p) 65536 - 32768.5)
    code = torch.floor(one_minus_p * UNIFORM_LEVELS - 32768.5)
    return code.clamp_(-32768, 32767).to(torch.int16)


def hard_samples(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """bool [k, n]: the forward value of the straight-through sample."""
    return uniforms > keep_thresholds(logits)


def soft_samples(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """float [k, n]: s = sigmoid(l + logit(U))."""
    return _soft_from_codes(*_soft_coefficients(logits.detach()), uniforms)


def straight_through_samples(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """float [..., n], differentiable: the hard sample (s > 0.5) forward, the soft sample's gradient
    backward, s = sigmoid(l + logit(U)); for a few logits (unit masks), where the weights' fused
    kernel (sample_masked_weights) has nothing to save. uniforms: int16 codes of logits' shape."""
    soft = torch.sigmoid(logits + torch.logit(uniform_values(uniforms)))
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def _soft_coefficients(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-weight constants (a, b, c, d) with s = (a v + b) / (c v + d) for the int16 code v.

    sigmoid(l + logit(U)) = p U / ((1 - p) + (2p - 1) U) with p = sigmoid(l), U = (v + 32768.5) / 65536;
    folding U's affine map into the constants leaves two multiply-adds and a division per sample,
    and no log or exp.
    """
    p = torch.sigmoid(logits)
    scale, offset = 1.0 / UNIFORM_LEVELS, 32768.5 / UNIFORM_LEVELS
    slope = 2 * p - 1
    return p * scale, p * offset, slope * scale, (1 - p) + slope * offset


def _soft_from_codes(a, b, c, d, uniforms):
    v = uniforms.float()
    numerator = torch.addcmul(b, a, v)
    return numerator.div_(torch.addcmul(d, c, v, out=v))


# The kernels get per-weight quantities ([n], computed once per step) and per-sample uniforms
# ([k, n]), so the work over k x n is a comparison forward and a few products backward.
def _masked_forward(thresholds, weights, uniforms, dtype):
    # comparing straight into a float tensor, then scaling in place, is about four times faster
    # on the CPU than torch.where(uniforms > thresholds, weights, 0) (measured: 1.8 vs 7.2 ms for
    # k x n = 4 x 640,000). In bf16 the product is rounded once, as autocast would round W * h.
    hard = torch.empty(uniforms.shape, dtype=dtype or weights.dtype, device=weights.device)
    return torch.gt(uniforms, thresholds, out=hard).mul_(weights)


def _grad_sum_backward(grad_masked, a, b, c, d, uniforms):
    """sum_k g_k s_k (1 - s_k) per mask: [m, k, n] -> [m, n]."""
    return torch.ops.aten.sigmoid_backward(grad_masked, _soft_from_codes(a, b, c, d, uniforms)).sum(-2)


def _weights_backward(grad_masked, logits, uniforms):
    """sum over masks and samples of h g: [m, k, n] -> [n] (the forward's comparison trick)."""
    return _masked_forward(keep_thresholds(logits), grad_masked, uniforms, grad_masked.dtype).sum((0, 1))


_COMPILED_BACKWARD = []


def _grad_sum_kernel(compiled: bool):
    """The backward kernel; torch.compile fuses it into one loop over k x n (about 1.7x faster
    here, after a one-off compile of a few seconds). The forward is a comparison and a product,
    which compiling does not speed up."""
    if not compiled:
        return _grad_sum_backward
    if not _COMPILED_BACKWARD:
        _COMPILED_BACKWARD.append(torch.compile(_grad_sum_backward, dynamic=True))
    return _COMPILED_BACKWARD[0]


class _StraightThroughMask(torch.autograd.Function):
    """weights * hard sample, with the Gumbel-sigmoid straight-through gradient to the logits.

    The logits may stack m masks of one tensor ([m, *shape], joint training): sample j of mask i
    is row i * k + j of the output, one pass for all masks instead of m copies to concatenate."""

    # The kernels see flat views ([m, 1, n] and [m, k, n]), so one compiled kernel serves every shape.
    @staticmethod
    def forward(ctx, logits, weights, uniforms, compiled, dtype, thresholds):
        ctx.save_for_backward(logits, weights, uniforms)
        ctx.compiled = compiled
        m = logits.shape[0] if logits.dim() > weights.dim() else 1
        k = uniforms.shape[0] // m
        thresholds = keep_thresholds(logits.reshape(m, 1, -1)) if thresholds is None else thresholds.reshape(m, 1, -1)
        flat = _masked_forward(thresholds, weights.reshape(-1), uniforms.view(m, k, -1), dtype)
        return flat.view(uniforms.shape)

    @staticmethod
    def backward(ctx, grad_masked):
        logits, weights, uniforms = ctx.saved_tensors
        m = logits.shape[0] if logits.dim() > weights.dim() else 1
        k = uniforms.shape[0] // m
        flat_logits, flat_uniforms = logits.reshape(m, 1, -1), uniforms.view(m, k, -1)
        flat_grad = grad_masked.reshape(m, k, -1).to(logits.dtype)  # (another layout or type is copied)
        grad_logits = grad_weights = None
        if ctx.needs_input_grad[0]:
            # W is the same for every sample: multiply it in after the sum over k
            coefficients = _soft_coefficients(flat_logits)
            grad_sum = _grad_sum_kernel(ctx.compiled)(flat_grad, *coefficients, flat_uniforms)
            grad_logits = (grad_sum * weights.reshape(-1)).view(logits.shape)
        if ctx.needs_input_grad[1]:  # only for the original code's clipping quirk
            grad_weights = _weights_backward(flat_grad, flat_logits, flat_uniforms).view(weights.shape)
        return grad_logits, grad_weights, None, None, None, None


def sample_masked_weights(logits: torch.Tensor, weights: torch.Tensor, uniforms: torch.Tensor,
                          compiled: bool = False, dtype: torch.dtype | None = None,
                          thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """K masked copies of a weight tensor (for each of m stacked masks).

    logits: [*shape] float (requires grad), or [m, *shape] for m masks; weights: [*shape] frozen;
    uniforms: int16 [k, *shape], or [m * k, *shape] (mask i's samples in rows i*k .. i*k+k-1).
    Returns [k, *shape] (or [m * k, *shape]) = weights * h with h the hard Gumbel-sigmoid samples;
    the gradient reaches the logits through the soft sample (straight-through). `compiled` fuses the
    backward's elementwise work with torch.compile (a one-off compile of some seconds). `dtype`:
    the copies' float type (default the weights'; torch.bfloat16 for a bf16 forward, which halves
    their memory; the gradient to the logits is computed in the logits' type). `thresholds`:
    keep_thresholds(logits), when several calls of one step share them (sample groups).
    """
    return _StraightThroughMask.apply(logits, weights, uniforms, compiled, dtype, thresholds)


def gumbel_sigmoid_reference(logits: torch.Tensor, k: int, generator: torch.Generator | None = None,
                             tau: float = 1.0, eps: float = 1e-10) -> torch.Tensor:
    """The paper's formula with two uniforms per sample, straight-through; [k, *logits.shape].

    Kept as the readable definition, for tests and for comparison in benchmarks.
    """
    shape = (k, *logits.shape)
    u0 = torch.rand(shape, generator=generator, device=logits.device)
    u1 = torch.rand(shape, generator=generator, device=logits.device)
    noise = -torch.log(torch.log(u1 + eps) / torch.log(u0 + eps) + eps)
    soft = torch.sigmoid((logits + noise) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft
