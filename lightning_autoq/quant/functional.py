"""Pure tensor primitives shared by every quantizing scheme.

Rounding and sign with straight-through estimators (STE), gradient scaling (LSQ), the
surrogate gradient that a quantizer hands back to its input, overflow-safe statistics (and
variants that reuse a ``|x|`` or ``max|x|`` already computed), the gradient of a scale times
input-dependent codes (:func:`scale_times`) and the minimum-MSE shared-exponent search of
INT-SE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Backward = Literal["ste", "clipped"]
BACKWARD_MODES: tuple[str, ...] = ("ste", "clipped")

#: Smallest positive float32 normal: the floor for every step size, so no division by zero.
TINY = torch.finfo(torch.float32).tiny


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest (half to even); the gradient passes through unchanged."""
    return x + (torch.round(x) - x).detach()


def floor_ste(x: Tensor) -> Tensor:
    """Floor; the gradient passes through unchanged."""
    return x + (torch.floor(x) - x).detach()


def round_clip_ste(x: Tensor, lo: float | Tensor, hi: float | Tensor) -> Tensor:
    """``clip(round(x), lo, hi)``: STE through the rounding, zero gradient where clipped.

    Computed as ``round(clip(x))`` (equal for integer bounds): clipping first keeps an
    overflowed ``x / step`` (``inf``) finite, and the gradient is zero exactly outside
    ``[lo, hi]``, as in LSQ's step gradient.
    """
    return round_ste(torch.clamp(x, lo, hi))


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (LSQ, Esser et al. 2020,
    https://arxiv.org/abs/1902.08153)."""
    scaled = x * scale
    # x + 0 exactly: the forward value is bit-identical to x (unlike (x - xs) + xs).
    return x.detach() + (scaled - scaled.detach())


#: Elements from which :func:`attach_gradient` uses its one-node form.
_FUSE_FROM = 2**16


def attach_gradient(
    x: Tensor,
    q: Tensor,
    mode: Backward = "ste",
    ratio: float = 1.0,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
) -> Tensor:
    """Return ``q`` in the forward pass with a surrogate gradient to ``x``.

    ``q`` must have been computed from ``x.detach()``: it then carries gradients to the
    quantizer's own parameters only, and this function adds the gradient to the input:
    ``ratio`` everywhere (``"ste"``, the piecewise-linear ``q + g*(x - q)`` of AutoQNN) or
    ``ratio`` inside ``[lo, hi]`` and zero outside (``"clipped"``). The forward value is
    exactly ``q``: the added term is ``ratio * (x - x.detach())``, which is zero.

    A large tensor goes through one autograd node with one fresh tensor (the sum is formed
    in place) instead of the chain of operations it stands for, which allocates every
    intermediate; a small one through the chain, whose per-call overhead is lower. Values
    and gradients are the same, bit for bit.
    """
    clipped = mode == "clipped"
    if clipped:
        if lo is None or hi is None:
            raise ValueError("backward='clipped' needs the level range (lo, hi)")
    elif mode != "ste":
        raise ValueError(f"unknown backward mode {mode!r}; allowed: {', '.join(BACKWARD_MODES)}")
    chain = x.numel() < _FUSE_FROM or q.shape != x.shape or q.dtype != x.dtype
    if chain:  # small, or broadcasting or type promotion: the plain operations
        surrogate = x - x.detach()
        if clipped:
            surrogate = surrogate * ((x >= lo) & (x <= hi))
        if ratio != 1.0:
            surrogate = surrogate * ratio
        return q + surrogate
    return _AttachGradient.apply(x, q, clipped, float(ratio), lo, hi)


def _inside(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``[lo <= x <= hi]`` as 0.0 / 1.0 floats (NaN: 0)."""
    return ge_mask(x, lo).mul_(le_mask(x, hi))


class _AttachGradient(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        q: Tensor,
        clipped: bool,
        ratio: float,
        lo: Tensor | None,
        hi: Tensor | None,
    ) -> Tensor:
        # q + ((x - x) [* inside] [* ratio]): zero, or NaN where x is not finite, as the chain.
        out = torch.sub(x, x)
        if clipped:
            out.mul_(_inside(x, lo, hi))  # type: ignore[arg-type]
            ctx.save_for_backward(x, lo, hi)
        if ratio != 1.0:
            out.mul_(ratio)
        ctx.clipped, ctx.ratio = clipped, ratio
        return out.add_(q)  # addition commutes exactly

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * ctx.ratio if ctx.ratio != 1.0 else grad
            if ctx.clipped:
                x, lo, hi = ctx.saved_tensors
                grad_x = grad_x * _inside(x.detach(), lo.detach(), hi.detach())
        grad_q = grad if ctx.needs_input_grad[1] else None
        return grad_x, grad_q, None, None, None, None


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range of a ``bits``-bit number: two's complement or unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def abs_max(x: Tensor, dims: Sequence[int]) -> Tensor:
    """``max |x|`` over ``dims`` (kept as size-1 dimensions)."""
    return x.abs().amax(dim=tuple(dims), keepdim=True)


def abs_mean(x: Tensor, dims: Sequence[int]) -> Tensor:
    """``mean |x|`` over ``dims``, computed on ``x / max|x|`` so huge inputs cannot overflow."""
    return mean_of_magnitudes(x.abs(), dims, inplace=True)


def mean_of_magnitudes(
    ax: Tensor, dims: Sequence[int], *, inplace: bool = False, out: Tensor | None = None
) -> Tensor:
    """:func:`abs_mean` of a tensor that is already ``|x|`` (one pass fewer).

    Bit-identical to ``abs_mean(x, dims)`` for ``ax = x.abs()``: ``mean(ax / m) * m`` with
    ``m = max(ax)`` (at least ``TINY``). The quotient goes to ``ax`` itself (``inplace``: the
    caller's scratch tensor, not needed afterwards) or to ``out`` (a scratch tensor like
    ``ax``), else to a new tensor.
    """
    dims = tuple(dims)
    m = ax.amax(dim=dims, keepdim=True).clamp_min(TINY)
    scaled = torch.div(ax, m, out=ax if inplace else out)
    return scaled.mean(dim=dims, keepdim=True) * m


#: Smallest positive float32 (subnormal): ``x >= above_zero(t)`` is ``x >= t and x > 0``.
SMALLEST_SUBNORMAL = 2.0**-149


def above_zero(threshold: Tensor) -> Tensor:
    """``threshold`` raised to the smallest positive float, so ``x >= it`` excludes ``x = 0``.

    For any ``t``, ``x >= max(t, 2^-149)`` equals ``(x >= t) & (x > 0)`` (denormals kept, as
    torch does unless ``set_flush_denormal(True)``).
    """
    return threshold.clamp_min(SMALLEST_SUBNORMAL)


def ge_mask(x: Tensor, threshold: Tensor | float) -> Tensor:
    """``(x >= threshold).to(x.dtype)``: 1.0 where true, 0.0 elsewhere (NaN included).

    Written by the comparison straight into a float tensor shaped like ``x`` (``threshold``
    must broadcast to it): on the CPU a boolean tensor, and ``torch.where`` over one, cost
    several times more than a float pass.
    """
    return torch.ge(x, threshold, out=torch.empty_like(x))


def le_mask(x: Tensor, threshold: Tensor | float) -> Tensor:
    """``(x <= threshold).to(x.dtype)``, like :func:`ge_mask`."""
    return torch.le(x, threshold, out=torch.empty_like(x))


def sign_no_zero(x: Tensor) -> Tensor:
    """``+1`` where ``x >= 0`` (zeros of both signs), ``-1`` elsewhere (NaN included).

    ``2 [x >= 0] - 1`` in three float passes; bit-identical to
    ``torch.where(x >= 0, 1.0, -1.0)``.
    """
    return ge_mask(x, 0.0).mul_(2.0).sub_(1.0)


class _ScaleTimes(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        scale: Tensor,
        x: Tensor,
        value: Callable[[Tensor, Tensor], Tensor],
        multiplier: Callable[[Tensor], Tensor],
    ) -> Tensor:
        ctx.multiplier = multiplier
        ctx.scale_shape = scale.shape
        ctx.save_for_backward(x)
        return value(x, scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # What autograd computes for ``scale * multiplier(x)``: the product, summed down to
        # the scale's shape (the same reduction the engine applies to a broadcast input).
        grad_scale_ = (grad * ctx.multiplier(x)).sum_to_size(ctx.scale_shape)
        return grad_scale_, None, None, None


def scale_times(
    scale: Tensor,
    x: Tensor,
    value: Callable[[Tensor, Tensor], Tensor],
    multiplier: Callable[[Tensor], Tensor],
) -> Tensor:
    """``value(x, scale)``, a fast way of writing ``scale * multiplier(x)``, and its gradient.

    A non-uniform scheme's level is its scale times a code that depends on the (detached)
    input only; ``value`` computes the product with few in-place tensor passes, and the
    gradient to ``scale`` is that of the plain product: the sum of
    ``grad * multiplier(x)`` over the broadcast dimensions. ``multiplier`` runs only in the
    backward pass, and the autograd node only when ``scale`` needs a gradient; ``x`` gets
    none (it must be detached).
    """
    if torch.is_grad_enabled() and scale.requires_grad:
        return _ScaleTimes.apply(scale, x, value, multiplier)
    return value(x, scale)


def std(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Population standard deviation over ``dims``, overflow-safe like :func:`abs_mean`."""
    return std_and_abs_max(x, dims)[0]


def std_and_abs_max(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """:func:`std` and :func:`abs_max` together, with one scratch tensor for both."""
    ax = x.abs()
    top = ax.amax(dim=tuple(dims), keepdim=True)
    m = top.clamp_min(TINY)
    return torch.div(x, m, out=ax).std(dim=tuple(dims), keepdim=True, correction=0) * m, top


def std_given_max(x: Tensor, top: Tensor, dims: Sequence[int], *, inplace: bool = False) -> Tensor:
    """:func:`std` with ``top = max|x|`` over ``dims`` already known (e.g. ``amax`` of ``x >= 0``).

    Bit-identical to ``std(x, dims)`` when ``top`` equals ``abs_max(x, dims)`` (up to the sign
    of a zero maximum, which the floor at ``TINY`` removes). ``inplace``: ``x`` is the
    caller's scratch tensor and receives the quotient.
    """
    m = top.clamp_min(TINY)
    scaled = x.div_(m) if inplace else x / m
    return scaled.std(dim=tuple(dims), keepdim=True, correction=0) * m


def step_floor(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Smallest step a statistics-based scheme uses: ``max|x| * 2^-20`` (at least ``TINY``).

    A zero standard deviation (constant tensor, one value per channel) would otherwise give a
    ``TINY`` step whose square underflows: ``x / step`` overflows and a learned step gets a NaN
    gradient. ``2^-20`` of the magnitude is finer than any grid of 8 bits or fewer needs.
    """
    return step_floor_given_max(abs_max(x, dims))


def step_floor_given_max(top: Tensor) -> Tensor:
    """:func:`step_floor` from ``top = abs_max(x, dims)`` already computed."""
    return (top * 2.0**-20).clamp_min(TINY)


def pow2(e: Tensor) -> Tensor:
    """``2**e`` for an integer-valued float tensor."""
    return torch.exp2(e)


def exponent_quantize(x: Tensor, exponent: Tensor, bits: int, signed: bool) -> Tensor:
    """``clip(round(x / 2^e)) * 2^e``: integer codes, power-of-two step (INT-SE, fixed point)."""
    lo, hi = code_range(bits, signed)
    step = pow2(exponent)
    return round_clip_ste(x / step, lo, hi) * step


def shared_exponent(
    x: Tensor, bits: int, signed: bool, dims: Sequence[int], candidates: int = 4
) -> Tensor:
    """Shared exponent ``s`` of INT-SE chosen by minimum mean squared error.

    ``s0 = ceil(log2(max|x| / max_code))`` is the smallest exponent at which nothing clips;
    a larger one only coarsens the grid, so the candidates are ``s0 - candidates + 1 .. s0``
    and the one with the least ``mean((x - Q_s(x))^2)`` over ``dims`` wins (ties: the larger
    exponent). One candidate is the plain max-based exponent. Yang et al., IOIQ (2023).

    Returns:
        The exponent, integer-valued float, shaped like ``abs_max(x, dims)``.
    """
    if candidates < 1:
        raise ValueError(f"candidates={candidates} must be >= 1")
    _, hi = code_range(bits, signed)
    if hi < 1:
        raise ValueError(f"{bits}-bit {'signed' if signed else 'unsigned'} codes have no magnitude")
    top = abs_max(x, dims).clamp_min(2.0**-100)
    s0 = torch.ceil(torch.log2(top / hi))
    best_s = s0
    best_err = ((x - exponent_quantize(x, s0, bits, signed)) ** 2).mean(
        dim=tuple(dims), keepdim=True
    )
    for k in range(1, candidates):
        s = s0 - k
        err = ((x - exponent_quantize(x, s, bits, signed)) ** 2).mean(dim=tuple(dims), keepdim=True)
        better = err < best_err
        best_s = torch.where(better, s, best_s)
        best_err = torch.where(better, err, best_err)
    return best_s
