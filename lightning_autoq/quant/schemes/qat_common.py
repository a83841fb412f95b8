"""Helpers shared by the QAT-method schemes (LSQ+, PACT, DoReFa, APoT, LQ-Nets, N2UQ).

A scheme's :meth:`~lightning_autoq.quant.Scheme.quantize` returns the exact level values in
the forward pass and the paper's surrogate in the backward pass (:func:`exact_with_gradient`);
the initial clipping values of the learned ranges come from a small MSE search
(:func:`mse_clip`); non-uniform level sets are searched with :func:`nearest_in_sorted`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_autoq.quant.functional import TINY, abs_max, std

#: Fractions of the largest magnitude tried as the initial clip by :func:`mse_clip`.
CLIP_FRACTIONS: tuple[float, ...] = (1.0, 0.85, 0.7, 0.55, 0.45, 0.35, 0.25)


def exact_with_gradient(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` exactly in the forward pass, the gradient of ``surrogate`` in the backward.

    ``value.detach() + (s - s.detach())``: the added term is exactly zero, so the forward
    value is bit-identical to ``value`` (the level set), whatever the surrogate.
    """
    return value.detach() + (surrogate - surrogate.detach())


def uniform_clip_quantize(x: Tensor, clip: Tensor, bits: int, signed: bool) -> Tensor:
    """Uniform ``2^b``-level quantization of ``x`` clipped to ``[-clip, clip]`` or ``[0, clip]``."""
    n = 2**bits - 1
    if signed:
        step = 2 * clip / n
        return torch.clamp(torch.round((x + clip) / step), 0, n) * step - clip
    step = clip / n
    return torch.clamp(torch.round(x / step), 0, n) * step


def mse_clip(
    x: Tensor,
    dims: Sequence[int],
    bits: int,
    signed: bool,
    quantize: Callable[[Tensor, Tensor], Tensor] | None = None,
    fractions: Sequence[float] = CLIP_FRACTIONS,
) -> Tensor:
    """The clip, among ``fractions`` of ``max|x|``, with the least quantization MSE over ``dims``.

    ``quantize(x, clip)`` defaults to :func:`uniform_clip_quantize` at ``bits``. The error is
    computed on ``x / max|x|`` so huge inputs cannot overflow; ties keep the larger clip.
    Result shaped like ``abs_max(x, dims)``, at least ``TINY``.
    """
    d = tuple(dims)
    top = abs_max(x, d) if signed else x.clamp_min(0).amax(dim=d, keepdim=True)
    top = top.clamp_min(TINY)
    if quantize is None:

        def quantize(v: Tensor, c: Tensor) -> Tensor:
            return uniform_clip_quantize(v, c, bits, signed)

    best = top
    best_err: Tensor | None = None
    for fraction in fractions:
        clip = (top * fraction).clamp_min(TINY)
        err = (((x - quantize(x, clip)) / top) ** 2).mean(dim=d, keepdim=True)
        if best_err is None:
            best_err = err
            best = clip
            continue
        better = err < best_err
        best = torch.where(better, clip, best)
        best_err = torch.where(better, err, best_err)
    return best


def robust_range(x: Tensor, dims: Sequence[int]) -> Tensor:
    """``min(max|x|, |mean| + 3 std)`` over ``dims`` (kept): a range that ignores outliers."""
    d = tuple(dims)
    top = abs_max(x, d)
    mean = (x / top.clamp_min(TINY)).mean(dim=d, keepdim=True) * top
    return torch.minimum(top, mean.abs() + 3 * std(x, d))


def nearest_in_sorted(u: Tensor, levels: Tensor) -> Tensor:
    """Index of the nearest entry of the sorted 1-D ``levels`` for each element of ``u``."""
    if levels.numel() == 1:
        return torch.zeros_like(u, dtype=torch.long)
    mid = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(u, mid)


def to_groups(x: Tensor, like: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``x`` as ``(groups, values)``: one row per element of the broadcast parameter ``like``.

    ``like`` has ``x.dim()`` dimensions (or none); its dimensions of size 1 are reduced. Returns
    the 2-D view and a function that maps a tensor of that 2-D shape back to ``x``'s layout.
    """
    if like.dim() == 0 or like.numel() == 1:
        return x.reshape(1, -1), lambda g: g.reshape(x.shape)
    if like.dim() != x.dim():
        raise ValueError(f"parameter shape {tuple(like.shape)} does not match {tuple(x.shape)}")
    kept = [d for d in range(x.dim()) if like.shape[d] != 1]
    reduced = [d for d in range(x.dim()) if like.shape[d] == 1]
    order = kept + reduced
    moved = x.permute(order)
    shape = moved.shape
    groups = moved.reshape(like.numel(), -1)
    inverse = [order.index(d) for d in range(x.dim())]
    return groups, lambda g: g.reshape(shape).permute(inverse)


__all__ = [
    "CLIP_FRACTIONS",
    "exact_with_gradient",
    "mse_clip",
    "nearest_in_sorted",
    "robust_range",
    "to_groups",
    "uniform_clip_quantize",
]
