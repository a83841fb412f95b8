"""APoT: additive powers-of-two quantization (Li, Dong, Wang, ICLR 2020, https://arxiv.org/abs/1909.13144)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import TINY, abs_max, std, step_floor
from lightning_autoq.quant.schemes.base import Params, Scheme, positive, register_scheme
from lightning_autoq.quant.schemes.qat_common import (
    exact_with_gradient,
    mse_clip,
    nearest_in_unit,
)


@lru_cache(maxsize=64)
def apot_magnitudes(bits: int, base_bits: int = 2) -> tuple[float, ...]:
    """The sorted APoT magnitudes in ``[0, 1]`` for ``bits`` magnitude bits (paper eq. 5).

    ``bits = k n``: ``n`` additive terms of ``k = base_bits`` bits each (the last term gets
    the remainder when ``k`` does not divide ``bits``). Term ``i`` takes a value in
    ``{0, 2^-i, 2^-(i+n), ..., 2^-(i+(2^k_i - 2) n)}``; a level is the sum of the terms, and
    the set is scaled by ``gamma`` so that the largest level is 1. The exponents of different
    terms interleave, so the ``2^bits`` sums are distinct.

    Example:
        >>> apot_magnitudes(2)  # k=2, n=1: powers of two
        (0.0, 0.25, 0.5, 1.0)
    """
    if bits < 1 or base_bits < 1:
        raise ValueError(f"bits={bits} and base_bits={base_bits} must be >= 1")
    n = math.ceil(bits / base_bits)
    widths = [base_bits] * (n - 1) + [bits - base_bits * (n - 1)]
    sums = [0.0]
    for i, k in enumerate(widths):
        term = [0.0] + [2.0 ** -(i + j * n) for j in range(2**k - 1)]
        sums = [s + t for s in sums for t in term]
    top = max(sums)
    return tuple(sorted(s / top for s in sums))


@register_scheme
@dataclass
class APoT(Scheme):
    """Levels ``alpha * gamma * sum_i p_i`` (additive powers of two), learned clip ``alpha``.

    * signed codes (weights): the paper's weight normalisation ``x_hat = (x - mean) / std``
      (recomputed for weights, a running average for signed activations), then a sign and
      ``b - 1`` magnitude bits: ``2^b - 1`` levels ``{-alpha m, ..., alpha m}``;
    * unsigned codes (ReLU activations): no normalisation, ``b`` magnitude bits.

    The clip is the paper's reparameterised clipping function (RCF): ``q = alpha
    Pi(clip(x_hat / alpha))`` with ``dq/dalpha = Pi(u) - u`` inside the clip and
    ``sign(x)`` outside. ``alpha`` starts at 3 for normalised inputs (the paper's weight
    initialisation) and at the MSE-best clip of the first batch for unsigned ones; its
    gradient is the paper's, unscaled (``lsq_grad_scale = False``). The input gets the
    paper's gradient (``differentiable_input``): ``1 / std`` through the normalisation
    (the mean and std are statistics without gradient, as the authors' ``weight.data``) and
    STE through the projection inside the clip, ``0`` outside. ``base_bits`` is the paper's
    ``k`` (2). Because of the normalisation the levels are in normalised units
    (``normalizes_input``); :meth:`bounds` gives the unclipped input range, so the plain
    surrogate ``backward="clipped"`` zeroes the input gradient where the paper's clip does.
    Bits 2..8. Published CIFAR-10 ResNet-20 W2A2/W3A3/W4A4: 90.96 / 92.49 / 92.45 % (FP 92.96).
    """

    name: ClassVar[str] = "apot"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)
    idempotent: ClassVar[bool] = False  # the normalisation moves a level off the grid
    learnable: ClassVar[tuple[str, ...]] = ("alpha",)
    needs_learned: ClassVar[bool] = True
    normalizes_input: ClassVar[bool] = True
    differentiable_input: ClassVar[bool] = True
    lsq_grad_scale: ClassVar[bool] = False
    base_bits: int = 2
    weight_alpha: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_bits < 1:
            raise ValueError(f"base_bits={self.base_bits} is not allowed; allowed: >= 1")

    def param_names(self) -> tuple[str, ...]:
        return ("alpha", "mean", "std")

    def unit_level_values(self, signed: bool) -> tuple[float, ...]:
        """The sorted level set for ``alpha = 1``, as Python floats."""
        mags = apot_magnitudes(self.bits - 1 if signed else self.bits, self.base_bits)
        return tuple(-m for m in reversed(mags[1:])) + mags if signed else mags

    def unit_levels(self, signed: bool, like: Tensor) -> Tensor:
        """The sorted level set for ``alpha = 1``."""
        values = self.unit_level_values(signed)
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = x.detach()  # normalisation statistics carry no gradient (the paper's weight.data)
        d = tuple(dims)
        shape = abs_max(x, d).shape
        if not signed:
            zeros, ones = torch.zeros(shape, device=x.device), torch.ones(shape, device=x.device)

            def quantize(v: Tensor, clip: Tensor) -> Tensor:
                return self.quantize(v, {"alpha": clip, "mean": zeros, "std": ones}, False)

            alpha = mse_clip(x, d, self.bits, False, quantize)
            return {"alpha": alpha, "mean": zeros, "std": ones}
        top = abs_max(x, d).clamp_min(TINY)
        mean = (x / top).mean(dim=d, keepdim=True) * top
        spread = torch.maximum(std(x, d), step_floor(x, d))
        alpha = torch.full(shape, self.weight_alpha, device=x.device)
        return {"alpha": alpha, "mean": mean, "std": spread}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        alpha = positive(params["alpha"])
        # Unsigned inputs are not normalised (mean 0, std 1: see estimate), so skip the passes.
        z = (x - params["mean"]) / params["std"].clamp_min(TINY) if signed else x
        u = torch.clamp(z / alpha, -1.0 if signed else 0.0, 1.0)
        values = self.unit_level_values(signed)
        unit = torch.tensor(values, dtype=x.dtype, device=x.device)
        index = nearest_in_unit(u.detach(), values)
        projected = torch.index_select(unit, 0, index.reshape(-1)).view(u.shape)
        # RCF: d/dalpha [alpha (Pi(u) + u - u.detach())] = Pi(u) - u inside, +-1 outside.
        surrogate = alpha * (projected + u - u.detach())
        return exact_with_gradient(projected * alpha.detach(), surrogate)

    def levels(self, params: Params, signed: bool) -> Tensor:
        alpha = positive(params["alpha"])
        return self.unit_levels(signed, alpha) * alpha.unsqueeze(-1)

    def bounds(self, params: Params, signed: bool) -> tuple[Tensor, Tensor]:
        """The input range the clip leaves alone: ``mean +- alpha std`` (``[0, alpha]``)."""
        alpha = positive(params["alpha"])
        spread = alpha * params["std"].clamp_min(TINY)
        high = params["mean"] + spread
        low = params["mean"] - spread if signed else params["mean"] * 0
        return low, high
