"""LSQ+: learned step and learned offset (Bhalgat et al., CVPRW 2020, https://arxiv.org/abs/2004.09576)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import TINY, abs_max, code_range, step_floor
from lightning_autoq.quant.schemes.base import Params, UniformScheme, positive, register_scheme
from lightning_autoq.quant.schemes.qat_common import mse_clip
from lightning_autoq.quant.uniform import UniformGrid


@register_scheme
@dataclass
class LSQPlus(UniformScheme):
    """``q = s rc((x - beta)/s, lo, hi) + beta`` with a learned step ``s`` and offset ``beta``.

    The offset lets the grid sit asymmetrically, for activations that can be negative
    (Swish, GELU, BN outputs without ReLU). Both gradients are LSQ's (the quantizer scales
    them by ``1 / sqrt(N Q_P)``): ``dq/dbeta = 1`` where ``x`` is clipped, ``0`` inside.

    Initialisation: the paper's MSE initialisation (§3.3), searched over clips that are
    fractions of the range: signed codes (weights, signed activations) put ``beta`` at the
    mean and ``s = c / 2^(b-1)`` for the best clip ``c`` of ``|x - mean|`` (the paper's
    weight rule ``max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)`` is the case ``c = 3 sigma``);
    unsigned codes put ``beta`` at ``min(x)`` and ``s = c / (2^b - 1)``.

    Bits 2..8; the paper's gradient scale ``1 / sqrt(N Q_P)`` on both parameters.
    """

    name: ClassVar[str] = "lsq_plus"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)
    learnable: ClassVar[tuple[str, ...]] = ("scale", "offset")
    needs_learned: ClassVar[bool] = True

    def param_names(self) -> tuple[str, ...]:
        return ("scale", "offset")

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        d = tuple(dims)
        floor = step_floor(x, d)
        lo, hi = code_range(self.bits, signed)
        if signed:
            top = abs_max(x, d).clamp_min(TINY)
            offset = (x / top).mean(dim=d, keepdim=True) * top
            per_clip = 2 ** (self.bits - 1)  # the clip c spans 2^(b-1) steps on each side
        else:
            offset = x.amin(dim=d, keepdim=True)
            per_clip = hi

        def quantize(v: Tensor, clip: Tensor) -> Tensor:
            step = (clip / per_clip).clamp_min(TINY)
            return torch.clamp(torch.round(v / step), lo, hi) * step

        clip = mse_clip(x - offset, d, self.bits, signed, quantize)
        return {"scale": torch.maximum(clip / per_clip, floor), "offset": offset}

    def grid(self, params: Params, signed: bool) -> UniformGrid:
        lo, hi = code_range(self.bits, signed)
        return UniformGrid(positive(params["scale"]), lo, hi, params["offset"])
