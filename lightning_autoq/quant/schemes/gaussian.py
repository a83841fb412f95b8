"""Uniform schemes whose step is a multiple of the standard deviation: uL2Q (Q) and clip (C).

The step factors are the MSE-optimal uniform steps for a Gaussian (AutoQNN, Gong et al. 2024,
https://arxiv.org/abs/2304.03782; uL2Q, Gong et al. 2019). Both use mid-rise levels
``a (k + 1/2)``, so zero is not a level of the signed grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import (
    code_range,
    std,
    std_and_abs_max,
    step_floor,
    step_floor_given_max,
)
from lightning_autoq.quant.schemes.base import Params, UniformScheme, positive, register_scheme
from lightning_autoq.quant.uniform import UniformGrid

#: uL2Q's step factors L_1..L_8 (index 0 is 1 bit).
UL2Q_FACTORS = (1.5950, 0.9953, 0.5872, 0.3359, 0.1894, 0.1057, 0.0571, 0.0305)
#: Symmetric clip's step factors L'_1..L'_8.
CLIP_FACTORS = (1.0, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)


@register_scheme
@dataclass
class UL2Q(UniformScheme):
    """Q: ``beta = mean(x); a = L_b sigma; q = a (rc((x - beta)/a - 1/2) + 1/2) + beta``.

    The grid is centred on the mean, so it adapts to one-sided data by itself: ``signed`` has
    no effect.
    """

    name: ClassVar[str] = "ul2q"
    letter: ClassVar[str] = "Q"
    learnable: ClassVar[tuple[str, ...]] = ("scale", "offset")

    def param_names(self) -> tuple[str, ...]:
        return ("scale", "offset")

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        beta = x.mean(dim=tuple(dims), keepdim=True)
        a = UL2Q_FACTORS[self.bits - 1] * std(x, dims)
        return {"scale": torch.maximum(a, step_floor(x - beta, dims)), "offset": beta}

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        lo, hi = code_range(self.bits, signed=True)
        return UniformGrid(positive(params["scale"]), lo, hi, params["offset"], shift=0.5)


@register_scheme
@dataclass
class Clip(UniformScheme):
    """C: ``a = L'_b sigma; q = a (rc(x/a - 1/2, -2^(b-1), 2^(b-1) - 1) + 1/2)``.

    Unsigned inputs use the zero-including grid ``a rc(x/a, 0, 2^b - 1)``.
    """

    name: ClassVar[str] = "clip"
    letter: ClassVar[str] = "C"
    learnable: ClassVar[tuple[str, ...]] = ("scale",)

    def param_names(self) -> tuple[str, ...]:
        return ("scale",)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        sigma, top = std_and_abs_max(x, dims)  # max|x| is shared with the step floor
        a = CLIP_FACTORS[self.bits - 1] * sigma
        return {"scale": torch.maximum(a, step_floor_given_max(top))}

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        lo, hi = code_range(self.bits, signed)
        return UniformGrid(positive(params["scale"]), lo, hi, shift=0.5 if signed else 0.0)
