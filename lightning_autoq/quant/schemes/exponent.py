"""Uniform schemes with a power-of-two step: fixed point (F) and INT-SE.

Both store integer codes and one shared exponent, so a product of two such values is an
integer product with the exponents added: the basis of integer-only inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import (
    abs_max,
    code_range,
    pow2,
    shared_exponent,
)
from lightning_autoq.quant.schemes.base import Params, UniformScheme, register_scheme
from lightning_autoq.quant.uniform import UniformGrid


class _PowerOfTwoStep(UniformScheme):
    """Shared code for schemes whose only parameter is an integer exponent."""

    def param_names(self) -> tuple[str, ...]:
        return ("exponent",)

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        # Running averages of the exponent (activations) are rounded to an integer here.
        lo, hi = code_range(self.bits, signed)
        return UniformGrid(pow2(torch.round(params["exponent"])), lo, hi)


@register_scheme
@dataclass
class FixedPoint(_PowerOfTwoStep):
    """F: ``e = floor(log2 max|x|) - (b - 2)``; ``q = clip(round(x / 2^e)) 2^e``.

    The exponent leaves one bit for the sign and ``b - 1`` for the magnitude (``b`` for
    unsigned inputs), so the largest value is kept up to one code of clipping.
    """

    name: ClassVar[str] = "fixed_point"
    letter: ClassVar[str] = "F"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        top = abs_max(x, dims).clamp_min(2.0**-100)
        magnitude_bits = self.bits - 1 if signed else self.bits
        return {"exponent": torch.floor(torch.log2(top)) - (magnitude_bits - 1)}


@register_scheme
@dataclass
class IntSE(_PowerOfTwoStep):
    """INT-SE: integer data ``D`` with one shared exponent ``s``, ``T = D 2^s``.

    ``s`` minimises the quantization MSE over ``candidates`` exponents at and below the
    max-based ``ceil(log2(max|x| / max_code))``: robust to outliers. Yang et al., IOIQ:
    integer-only incremental quantization, J. Qingdao Univ. (Eng. & Tech.) 2023(2).

    Args:
        bits: code width, 2..8.
        candidates: number of exponents searched (1 = the max-based exponent).
    """

    name: ClassVar[str] = "int_se"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)
    candidates: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates < 1:
            raise ValueError(f"candidates={self.candidates} is not allowed; allowed: >= 1")

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        return {"exponent": shared_exponent(x, self.bits, signed, dims, self.candidates)}
