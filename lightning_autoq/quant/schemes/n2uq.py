"""N2UQ: nonuniform-to-uniform quantization (Liu et al., CVPR 2022, https://arxiv.org/abs/2111.14826)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import TINY
from lightning_autoq.quant.schemes.base import Params, Scheme, positive, register_scheme
from lightning_autoq.quant.schemes.qat_common import exact_with_gradient, mse_clip

#: Learned interval parts: one per interval at the widest allowed width (4 bits: 15).
PARTS = 15
#: Smallest relative interval length used as a divisor in the backward function.
MIN_INTERVAL = 1e-6


def part_groups(bits: int) -> list[range]:
    """The :data:`PARTS` learned parts split into ``2^b - 1`` contiguous groups, one per interval.

    At 4 bits each interval has its own part; at 2 and 3 bits an interval's length is the
    sum of its group, so every width has the same parameter names (the quantizer needs one
    fixed set per scheme) and every part gets a gradient.
    """
    n = 2**bits - 1
    sizes = [PARTS // n + (1 if i < PARTS % n else 0) for i in range(n)]
    starts = [sum(sizes[:i]) for i in range(n)]
    return [range(s, s + size) for s, size in zip(starts, sizes, strict=True)]


@register_scheme
@dataclass
class N2UQ(Scheme):
    """Learned, non-uniform input thresholds; uniform output levels; generalized STE.

    The input is scaled into ``u = clip(x / c, 0, 1)`` (signed codes: ``u = clip((x/c + 1)/2,
    0, 1)``) by a learned range ``c``. ``[0, 1]`` is split into ``n = 2^b - 1`` intervals of
    learned relative lengths ``a_i`` (boundaries ``d_i = a_1 + ... + a_i``); the output
    steps from level ``i - 1`` to level ``i`` at the interval's midpoint, so the thresholds
    are non-uniform while the outputs ``c k / n`` (signed: ``c (2k/n - 1)``) are uniform.

    Backward (G-STE, paper §3.2): the gradient of the expectation of stochastic rounding
    inside each interval, i.e. of the piecewise-linear ``F(u) = sum_i clip((u - d_{i-1}) /
    a_i, 0, 1) / n``; the thresholds and ``c`` get their gradients through ``F``, unscaled
    (``lsq_grad_scale = False``), and so does the input (``differentiable_input``): the
    slope ``1 / (n a_i)`` in interval ``i`` (in ``x``: ``c / (n a_i c)``), ``0`` outside the
    range.

    Parameters: ``scale`` (``c``, the MSE-best clip of the first batch) and ``part0..part14``
    (positive parts of the interval lengths, see :func:`part_groups`), initialised to equal
    intervals (the uniform quantizer). The paper's entropy-preserving weight regulariser is
    not included. Bits 2..4 (the paper's range).
    """

    name: ClassVar[str] = "n2uq"
    bit_range: ClassVar[tuple[int, int]] = (2, 4)
    idempotent: ClassVar[bool] = False  # uniform outputs are not at the learned thresholds
    learnable: ClassVar[tuple[str, ...]] = ("scale", *(f"part{i}" for i in range(PARTS)))
    needs_learned: ClassVar[bool] = True
    differentiable_input: ClassVar[bool] = True
    lsq_grad_scale: ClassVar[bool] = False

    def param_names(self) -> tuple[str, ...]:
        return self.learnable

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        scale = mse_clip(x, dims, self.bits, signed)
        params = {"scale": scale}
        for group in part_groups(self.bits):
            for i in group:
                params[f"part{i}"] = torch.full_like(scale, 1.0 / len(group))
        return params

    def intervals(self, params: Params) -> list[Tensor]:
        """Relative interval lengths ``a_i`` (positive, summing to 1)."""
        lengths = []
        for group in part_groups(self.bits):
            parts = [params[f"part{i}"].abs() for i in group]
            lengths.append(torch.stack(parts).sum(0))
        total = torch.stack(lengths).sum(0).clamp_min(TINY)
        return [length / total for length in lengths]

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        c = positive(params["scale"])
        u = x / c
        if signed:
            u = (u + 1) / 2
        u = u.clamp(0, 1)
        n = 2**self.bits - 1
        lengths = self.intervals(params)
        if c.numel() == 1:
            codes, ramp = _codes_and_ramp_scalar(u, lengths)
        else:
            codes, ramp = _codes_and_ramp(u, lengths)
        unit = codes / n
        level = 2 * unit - 1 if signed else unit
        smooth = ramp / n
        surrogate = c * (2 * smooth - 1 if signed else smooth)
        return exact_with_gradient(c.detach() * level, surrogate)

    def levels(self, params: Params, signed: bool) -> Tensor:
        c = positive(params["scale"])
        n = 2**self.bits - 1
        unit = torch.arange(0, n + 1, dtype=c.dtype, device=c.device) / n
        level = 2 * unit - 1 if signed else unit
        return level * c.unsqueeze(-1)


def _codes_and_ramp(u: Tensor, lengths: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Codes (thresholds at the interval midpoints crossed) and ``n F(u)``, interval by interval.

    For parameters per channel; every interval costs a few full-size operations.
    """
    start = torch.zeros_like(lengths[0])
    codes = torch.zeros_like(u.detach())
    ramp = torch.zeros_like(u)
    for a in lengths:
        codes = codes + (u.detach() >= (start + a / 2).detach()).to(u.dtype)
        ramp = ramp + torch.clamp((u - start) / a.clamp_min(MIN_INTERVAL), 0, 1)
        start = start + a
    return codes, ramp


def _codes_and_ramp_scalar(u: Tensor, lengths: list[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`_codes_and_ramp` for one set of intervals: a few passes whatever the bits.

    The same thresholds (the same float sums), so the same codes; ``n F(u)`` is ``i`` plus
    the ramp inside the interval ``i`` that holds ``u``, whose gradient to ``u``, the
    interval's start and its length is the one the interval-by-interval sum has inside it.
    """
    starts, thresholds = [], []
    start = torch.zeros_like(lengths[0])
    for a in lengths:
        starts.append(start)
        thresholds.append(start + a / 2)
        start = start + a
    flat_u = u.detach().reshape(-1)
    cuts = torch.stack(thresholds).detach().reshape(-1).to(u.dtype)
    codes = torch.bucketize(flat_u, cuts, right=True).reshape(u.shape).to(u.dtype)
    begin = torch.stack(starts).reshape(-1)
    width = torch.stack(lengths).reshape(-1).clamp_min(MIN_INTERVAL)
    inside = torch.bucketize(flat_u, begin[1:].detach().to(u.dtype), right=True)
    inside = inside.reshape(u.shape)
    ramp = inside.to(u.dtype) + torch.clamp((u - begin[inside]) / width[inside], 0, 1)
    return codes, ramp
