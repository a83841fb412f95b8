"""Helpers shared by the QAT-method schemes (LSQ+, PACT, DoReFa, APoT, LQ-Nets, N2UQ).

A scheme's :meth:`~lightning_autoq.quant.Scheme.quantize` returns the exact level values in
the forward pass and the paper's surrogate in the backward pass (:func:`exact_with_gradient`);
the initial clipping values of the learned ranges come from a small MSE search
(:func:`mse_clip`); non-uniform level sets are searched with :func:`nearest_in_sorted`, or
with :func:`nearest_in_unit` (a lookup table, same result) when the values lie in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

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


#: Largest lookup table of :func:`nearest_in_unit` (bins per unit); beyond it, bucketize.
MAX_UNIT_BINS = 2**16


@lru_cache(maxsize=64)
def _unit_table(
    levels: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[int, Tensor, Tensor] | None:
    """``(n, first, mids)`` for :func:`nearest_in_unit`, or None when the mids are too close.

    ``n`` (a power of two) bins per unit over ``[-1, 1]``, so narrow that each bin
    ``[k/n, (k+1)/n)`` holds at most one midpoint between levels; ``first[k + n]`` is the
    number of midpoints below ``k/n``; ``mids`` ends with ``+inf``.
    """
    values = torch.tensor(levels, dtype=dtype, device=device)
    mids = (values[1:] + values[:-1]) / 2
    gap = float((mids[1:] - mids[:-1]).min()) if mids.numel() > 1 else 2.0
    if gap <= 0:
        return None
    n = 2 ** max(0, math.ceil(math.log2(1.0 / gap)))
    if n > MAX_UNIT_BINS:
        return None
    edges = torch.arange(-n, n + 1, device=device, dtype=torch.float64).div_(n).to(dtype)
    first = torch.bucketize(edges, mids)  # midpoints strictly below each bin's left edge
    return n, first, torch.cat([mids, mids.new_tensor([math.inf])])


def nearest_in_unit(u: Tensor, levels: tuple[float, ...]) -> Tensor:
    """:func:`nearest_in_sorted` for ``u`` in ``[-1, 1]``, by a lookup table (same indices).

    ``floor(u n)`` is exact for a power of two ``n``, so the table gives the number of
    midpoints below the bin's left edge, and one comparison with the next midpoint finishes
    the count (a bin holds at most one). Several times faster than ``torch.bucketize`` on
    large tensors; falls back to it when two midpoints are closer than ``1 / MAX_UNIT_BINS``.

    Args:
        u: values in ``[-1, 1]`` (outside, the result is undefined).
        levels: the sorted levels (a tuple, so the table is built once per level set).
    """
    table = _unit_table(levels, u.dtype, u.device)
    if table is None or len(levels) == 1:
        return nearest_in_sorted(u, torch.tensor(levels, dtype=u.dtype, device=u.device))
    n, first, mids = table
    flat = u.reshape(-1)
    bins = torch.floor(flat * n).long().clamp_(-n, n).add_(n)
    index = torch.index_select(first, 0, bins)  # far faster than advanced indexing on CPU
    index += flat > torch.index_select(mids, 0, index)
    return index.view(u.shape)


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
    "nearest_in_unit",
    "robust_range",
    "to_groups",
    "uniform_clip_quantize",
]
