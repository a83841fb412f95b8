"""PACT: parameterized clipping activation (Choi et al. 2018, https://arxiv.org/abs/1805.06085)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.schemes.base import Params, Scheme, positive, register_scheme
from lightning_autoq.quant.schemes.qat_common import exact_with_gradient, mse_clip


@register_scheme
@dataclass
class PACT(Scheme):
    """``y = clip(x, 0, alpha)``, ``q = round(y n / alpha) alpha / n`` with a learned ``alpha``.

    ``n = 2^b - 1`` for unsigned codes (the paper's ReLU activations); signed codes clip to
    ``[-alpha, alpha]`` with ``n = 2^(b-1) - 1`` steps per side. The gradient of ``alpha`` is
    the paper's (eq. 3, STE through the rounding): ``dq/dalpha = 1`` where ``x >= alpha``
    (``-1`` where ``x < -alpha``), ``0`` elsewhere, unscaled (``lsq_grad_scale = False``: no
    LSQ factor); the input gets the paper's ``dq/dx = 1`` on ``[0, alpha)`` (signed:
    ``[-alpha, alpha)``) and ``0`` elsewhere, from this scheme (``differentiable_input``).

    Hyperparameters: the paper initialises ``alpha = 10`` and regularises it with an L2
    penalty (here: the optimizer's weight decay on the parameter, if the module gives it
    any); ``init_alpha=None`` starts instead from the clip with the least quantization MSE
    on the first batch, ``init_alpha=10.0`` gives the paper's start. PACT's weights were
    quantized with DoReFa (scheme ``dorefa``), as in the recipe
    ``recipes/fashion_mnist/resnet20_pact_w4a4.yaml``. Bits 2..8.
    """

    name: ClassVar[str] = "pact"
    bit_range: ClassVar[tuple[int, int]] = (2, 8)
    learnable: ClassVar[tuple[str, ...]] = ("alpha",)
    needs_learned: ClassVar[bool] = True
    differentiable_input: ClassVar[bool] = True
    lsq_grad_scale: ClassVar[bool] = False
    init_alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_alpha is not None and not self.init_alpha > 0:
            raise ValueError(f"init_alpha={self.init_alpha} is not allowed; allowed: > 0 or None")

    def param_names(self) -> tuple[str, ...]:
        return ("alpha",)

    def steps(self, signed: bool) -> int:
        """Number of quantization steps between 0 and ``alpha``."""
        return 2 ** (self.bits - 1) - 1 if signed else 2**self.bits - 1

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        if self.init_alpha is not None:
            shape = [1 if d in tuple(dims) else s for d, s in enumerate(x.shape)]
            return {"alpha": torch.full(shape, float(self.init_alpha), device=x.device)}
        return {"alpha": mse_clip(x, dims, self.bits, signed, self._clip_quantize(signed))}

    def _clip_quantize(self, signed: bool):
        def quantize(x: Tensor, alpha: Tensor) -> Tensor:
            return self.quantize(x, {"alpha": alpha}, signed)

        return quantize

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        alpha = positive(params["alpha"])
        n = self.steps(signed)
        clipped = torch.where(x >= alpha, alpha, x)  # d/dalpha = 1 where x >= alpha
        low = -alpha if signed else torch.zeros_like(alpha)
        clipped = torch.where(x < low, low, clipped)  # input gradient 1 on [low, alpha)
        a = alpha.detach()
        codes = torch.round(clipped.detach() / a * n)
        return exact_with_gradient((codes / n) * a, clipped)

    def levels(self, params: Params, signed: bool) -> Tensor:
        alpha = positive(params["alpha"])
        n = self.steps(signed)
        codes = torch.arange(-n if signed else 0, n + 1, dtype=alpha.dtype, device=alpha.device)
        return (codes / n) * alpha.unsqueeze(-1)
