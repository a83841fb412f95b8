"""Power-of-two (P): logarithmic levels ``a sign(x) 2^k`` of AutoQNN
(https://arxiv.org/abs/2304.03782), after INQ (Zhou et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import TINY, Backward, std
from lightning_autoq.quant.schemes.base import Params, Scheme, register_scheme

#: Base-level factors l_1..l_4 (``a = l_b sigma``).
POW2_FACTORS = (1.0, 0.9, 0.4, 0.03)


@register_scheme
@dataclass
class PowerOfTwo(Scheme):
    """P: ``a = l_b sigma``; ``k = clip(round(log2|x/a|), 0, 2^(b-1) - 1)``; ``q = a sign(x) 2^k``.

    Signed: ``2^b`` levels ``+-a 2^k``; zero maps to ``+a`` (a zero level would be a
    ``2^b + 1``-th code, not storable in ``b`` bits). Unsigned inputs are clamped at zero
    first and keep zero as a level: ``{0} + {a 2^k}``. Bits 1..4.
    """

    name: ClassVar[str] = "power_of_two"
    letter: ClassVar[str] = "P"
    bit_range: ClassVar[tuple[int, int]] = (1, 4)
    default_backward: ClassVar[Backward] = "ste"
    learnable: ClassVar[tuple[str, ...]] = ("scale",)

    def param_names(self) -> tuple[str, ...]:
        return ("scale",)

    def _top(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = x if signed else x.clamp_min(0.0)
        return {"scale": (POW2_FACTORS[self.bits - 1] * std(x, dims)).clamp_min(TINY)}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        x = x if signed else x.clamp_min(0.0)
        a = params["scale"]
        k = torch.clamp(torch.round(torch.log2((x / a).detach().abs())), 0, self._top())
        sign = torch.where(x >= 0, 1.0, -1.0) if signed else torch.sign(x)
        return a * sign.to(x.dtype) * torch.exp2(k)

    def levels(self, params: Params, signed: bool) -> Tensor:
        a = params["scale"]
        powers = torch.exp2(torch.arange(self._top() + 1, dtype=a.dtype, device=a.device))
        magnitudes = a.unsqueeze(-1) * powers
        if signed:
            return torch.cat([-magnitudes, magnitudes], dim=-1)
        return torch.cat([torch.zeros_like(a).unsqueeze(-1), magnitudes], dim=-1)
