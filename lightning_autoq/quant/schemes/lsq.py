"""LSQ: learned step size quantization (Esser et al., ICLR 2020, https://arxiv.org/abs/1902.08153)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from lightning_autoq.quant.functional import TINY, abs_mean, code_range
from lightning_autoq.quant.schemes.base import Params, UniformScheme, positive, register_scheme
from lightning_autoq.quant.uniform import UniformGrid


@register_scheme
@dataclass
class LSQ(UniformScheme):
    """``q = s rc(x/s, -Q_N, Q_P)`` with a learned step ``s``, initialised to
    ``2 mean|x| / sqrt(Q_P)``; the quantizer scales the gradient of ``s`` by
    ``1 / sqrt(N Q_P)``. Bits 2..8 (published: ImageNet ResNet-18 W2A2/W3A3/W4A4
    67.6 / 70.2 / 71.1 %, FP 70.5 %).
    """

    name: ClassVar[str] = "lsq"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)
    learnable: ClassVar[tuple[str, ...]] = ("scale",)
    needs_learned: ClassVar[bool] = True

    def param_names(self) -> tuple[str, ...]:
        return ("scale",)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        scale = 2 * abs_mean(x, dims) / math.sqrt(self.max_code(signed))
        return {"scale": scale.clamp_min(TINY)}

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        lo, hi = code_range(self.bits, signed)
        return UniformGrid(positive(params["scale"]), lo, hi)
