"""DoReFa-Net quantizers (Zhou et al. 2016, https://arxiv.org/abs/1606.06160)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import TINY, Backward, abs_max
from lightning_autoq.quant.schemes.base import Params, Scheme, register_scheme
from lightning_autoq.quant.schemes.qat_common import exact_with_gradient


@register_scheme
@dataclass
class DoReFa(Scheme):
    """DoReFa's two k-bit quantizers, ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)``.

    * signed codes (weights, paper eq. 9): ``t = tanh(x) / (2 max|tanh(x)|) + 1/2`` and
      ``q = 2 quantize_k(t) - 1``: ``2^k`` levels ``2i/(2^k - 1) - 1`` in ``[-1, 1]``;
    * unsigned codes (activations, paper §2.6): ``q = quantize_k(clip(x, 0, 1))``: levels
      ``i/(2^k - 1)``, the clip at 1 fixed (PACT learns it instead, scheme ``pact``).

    The weight output lives in ``[-1, 1]`` whatever the scale of ``x`` (a batch norm after
    the layer absorbs it), so it is not in the weight's own units (``normalizes_input``);
    the normaliser ``max|tanh(x)| = tanh(max|x|)`` comes from the parameter ``abs_max``,
    recomputed for weights and a running average for signed activations. The input gets the
    paper's gradient (``differentiable_input``: STE through the rounding only): for weights
    the derivative of ``2 t - 1`` through ``tanh`` and, the normaliser being recomputed from
    the live weight, through ``max|tanh(x)|`` too (as the authors' code, which does not stop
    its gradient); for activations ``1`` on ``[0, 1]``, ``0`` outside. ``backward="ste"``
    or ``"clipped"`` replace it by a plain surrogate.
    Not idempotent (``tanh`` of a level is not a level). Bits 2..8 (the paper's 1-bit weights
    use ``E|x| sign(x)``: scheme ``binary``).
    """

    name: ClassVar[str] = "dorefa"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)
    idempotent: ClassVar[bool] = False
    default_backward: ClassVar[Backward] = "ste"
    normalizes_input: ClassVar[bool] = True
    differentiable_input: ClassVar[bool] = True

    def param_names(self) -> tuple[str, ...]:
        return ("abs_max",)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        return {"abs_max": abs_max(x, dims)}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        n = 2**self.bits - 1
        if signed:
            # max|tanh(x)| = tanh(max|x|): tanh is odd and increasing.
            norm = torch.tanh(params["abs_max"]).clamp_min(TINY)
            t = torch.tanh(x) / (2 * norm) + 0.5
            t = t.clamp(0, 1)  # a running normaliser may be exceeded in evaluation
            codes = torch.round(t.detach() * n)
            return exact_with_gradient(2 * (codes / n) - 1, 2 * t - 1)
        u = x.clamp(0, 1)
        codes = torch.round(u.detach() * n)
        return exact_with_gradient(codes / n, u)

    def levels(self, params: Params, signed: bool) -> Tensor:
        p = params["abs_max"]
        n = 2**self.bits - 1
        codes = torch.arange(0, n + 1, dtype=p.dtype, device=p.device)
        base = 2 * (codes / n) - 1 if signed else codes / n
        return base.expand(*p.shape, n + 1)
