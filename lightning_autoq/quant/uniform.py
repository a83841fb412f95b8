"""Uniform grids and their fused fake-quantization.

Six schemes (uL2Q, clip, zoom, fixed point, INT-SE, LSQ) share one shape of level set:
``offset + step * (k + shift)`` for integer codes ``k`` in ``[lo, hi]`` (``shift`` is 1/2 for
mid-rise grids). :func:`uniform_fake_quant` quantizes onto such a grid in one autograd node
that computes the input gradient (STE, optionally clipped to the grid, times a ratio) and the
gradients of ``step`` and ``offset`` (LSQ's step gradient, Esser et al. 2020,
https://arxiv.org/abs/1902.08153) with a few tensor passes, instead of the dozen a chain of
STE primitives records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class UniformGrid:
    """Levels ``offset + step * (k + shift)``, ``k`` an integer in ``[lo, hi]``.

    ``step`` and ``offset`` broadcast against the input and may carry gradients.
    """

    step: Tensor
    lo: int
    hi: int
    offset: Tensor | None = None
    shift: float = 0.0

    def levels(self) -> Tensor:
        """Every level, along a new last dimension (same arithmetic as the quantizer)."""
        codes = torch.arange(self.lo, self.hi + 1, dtype=self.step.dtype, device=self.step.device)
        values = (codes + self.shift) * self.step.unsqueeze(-1)
        return values if self.offset is None else values + self.offset.unsqueeze(-1)


def _reduce_to(grad: Tensor, like: Tensor) -> Tensor:
    return grad.sum() if like.dim() == 0 else grad.sum_to_size(like.shape)


class _UniformFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        step: Tensor,
        offset: Tensor | None,
        shift: float,
        lo: int,
        hi: int,
        clipped: bool,
        ratio: float,
    ) -> Tensor:
        centred = x if offset is None else x - offset
        v = centred / step
        if shift:
            v = v - shift
        codes = torch.clamp(v, lo, hi).round_()
        inside = (v >= lo) & (v <= hi)
        if shift:
            codes = codes + shift  # the level index k + shift
        q = codes * step
        if offset is not None:
            q = q + offset
        ctx.clipped, ctx.ratio, ctx.shift = clipped, ratio, shift
        ctx.has_offset = offset is not None
        ctx.save_for_backward(v, codes, inside, step, offset if offset is not None else step)
        return q

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        v, codes, inside, step, offset = ctx.saved_tensors
        grad_x = grad_step = grad_offset = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * inside if ctx.clipped else grad
            if ctx.ratio != 1.0:
                grad_x = grad_x * ctx.ratio
        if ctx.needs_input_grad[1]:
            # q = step (c + shift) + offset, c = round(clip(v)), v = (x - offset) / step - shift,
            # STE through round: dq/dstep = (c + shift) - inside * (v + shift).
            position = v + ctx.shift if ctx.shift else v
            grad_step = _reduce_to(grad * (codes - inside * position), step)
        if ctx.has_offset and ctx.needs_input_grad[2]:
            grad_offset = _reduce_to(grad * (~inside), offset)  # dq/doffset = 1 - inside
        return grad_x, grad_step, grad_offset, None, None, None, None, None


def uniform_fake_quant(
    x: Tensor, grid: UniformGrid, *, clipped: bool = True, ratio: float = 1.0
) -> Tensor:
    """Quantize ``x`` onto ``grid``: ``offset + step * (clip(round(v), lo, hi) + shift)``.

    Args:
        x: input (float32).
        grid: the levels; gradients flow to its ``step`` and ``offset`` tensors.
        clipped: input gradient zero where ``x`` lies outside the grid (else identity).
        ratio: factor on the input gradient.
    """
    return _UniformFakeQuant.apply(
        x, grid.step, grid.offset, grid.shift, grid.lo, grid.hi, clipped, ratio
    )
