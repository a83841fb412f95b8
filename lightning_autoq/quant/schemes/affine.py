"""Zoom (Z): the min-max affine scheme of AutoQNN (https://arxiv.org/abs/2304.03782).

The step is ``a = (max - min) / (2^b - 1)`` and the levels ``min + a k``, ``k = 0..2^b - 1``,
so both ends of the observed range are levels (the paper's half-step-shifted grid, clipped
to ``[min, max]``, differs only in where the levels sit inside the range). Affine: ``signed``
has no effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from lightning_autoq.quant.functional import TINY
from lightning_autoq.quant.schemes.base import Params, UniformScheme, register_scheme
from lightning_autoq.quant.uniform import UniformGrid


@register_scheme
@dataclass
class Zoom(UniformScheme):
    """Z: min-max affine grid with ``2^b`` levels spanning ``[min, max]``."""

    name: ClassVar[str] = "zoom"
    letter: ClassVar[str] = "Z"
    learnable: ClassVar[tuple[str, ...]] = ("low", "high")

    def param_names(self) -> tuple[str, ...]:
        return ("low", "high")

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        d = tuple(dims)
        return {"low": x.amin(dim=d, keepdim=True), "high": x.amax(dim=d, keepdim=True)}

    def _step(self, params: Params) -> Tensor:
        return ((params["high"] - params["low"]) / (2**self.bits - 1)).clamp_min(TINY)

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        return UniformGrid(self._step(params), 0, 2**self.bits - 1, params["low"])
