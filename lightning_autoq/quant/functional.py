"""Pure tensor primitives shared by every quantizing scheme.

Rounding and sign with straight-through estimators (STE), gradient scaling (LSQ), the
surrogate gradient that a quantizer hands back to its input, overflow-safe statistics and
the minimum-MSE shared-exponent search of INT-SE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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
    """
    surrogate = x - x.detach()
    if mode == "clipped":
        if lo is None or hi is None:
            raise ValueError("backward='clipped' needs the level range (lo, hi)")
        surrogate = surrogate * ((x >= lo) & (x <= hi))
    elif mode != "ste":
        raise ValueError(f"unknown backward mode {mode!r}; allowed: {', '.join(BACKWARD_MODES)}")
    if ratio != 1.0:
        surrogate = surrogate * ratio
    return q + surrogate


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
    m = abs_max(x, dims).clamp_min(TINY)
    return (x.abs() / m).mean(dim=tuple(dims), keepdim=True) * m


def std(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Population standard deviation over ``dims``, overflow-safe like :func:`abs_mean`."""
    m = abs_max(x, dims).clamp_min(TINY)
    return (x / m).std(dim=tuple(dims), keepdim=True, correction=0) * m


def step_floor(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Smallest step a statistics-based scheme uses: ``max|x| * 2^-20`` (at least ``TINY``).

    A zero standard deviation (constant tensor, one value per channel) would otherwise give a
    ``TINY`` step whose square underflows: ``x / step`` overflows and a learned step gets a NaN
    gradient. ``2^-20`` of the magnitude is finer than any grid of 8 bits or fewer needs.
    """
    return (abs_max(x, dims) * 2.0**-20).clamp_min(TINY)


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
