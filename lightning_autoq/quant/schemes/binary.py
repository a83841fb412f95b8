"""Binary-family schemes of AutoQNN: binary (B), ternary (T) and residual binary (R).

Gong et al., AutoQNN, J. Comput. Sci. Technol. 39(2), 2024, https://arxiv.org/abs/2304.03782.
These level sets have no fixed grid, so the input gradient is the plain STE (identity).
Unsigned inputs (``signed=False``) are clamped at zero first, so their levels are the
non-negative part of the signed set (and zero).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import Backward, abs_mean
from lightning_autoq.quant.schemes.base import Params, Scheme, register_scheme


def _nonneg(x: Tensor, signed: bool) -> Tensor:
    return x if signed else x.clamp_min(0.0)


def _sign_no_zero(x: Tensor) -> Tensor:
    """+1 for ``x >= 0``, -1 otherwise (zero gets a level too)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


@register_scheme
@dataclass
class Binary(Scheme):
    """B: ``a = mean|x|; q = a * sign(x)`` (XNOR-Net style scaled sign).

    Unsigned: levels ``{0, a}`` with ``a = 2 * mean(x)``, threshold ``a / 2``.
    """

    name: ClassVar[str] = "binary"
    letter: ClassVar[str] = "B"
    bit_range: ClassVar[tuple[int, int]] = (1, 1)
    default_backward: ClassVar[Backward] = "ste"
    learnable: ClassVar[tuple[str, ...]] = ("scale",)

    def param_names(self) -> tuple[str, ...]:
        return ("scale",)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        a = abs_mean(_nonneg(x, signed), dims)
        return {"scale": a if signed else 2 * a}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        a = params["scale"]
        if signed:
            return a * _sign_no_zero(x)
        return a * (x >= a / 2).to(x.dtype)

    def levels(self, params: Params, signed: bool) -> Tensor:
        a = params["scale"]
        low = -a if signed else torch.zeros_like(a)
        return torch.stack([low, a], dim=-1)


@register_scheme
@dataclass
class Ternary(Scheme):
    """T: ``d = 0.7 mean|x|``; ``t = sign(x) [|x| >= d]``; ``a = sum(t x) / sum|t|``; ``q = a t``.

    Ternary weight networks, Li et al. 2016 (https://arxiv.org/abs/1605.04711); stored in 2 bits.
    """

    name: ClassVar[str] = "ternary"
    letter: ClassVar[str] = "T"
    bit_range: ClassVar[tuple[int, int]] = (2, 2)
    default_backward: ClassVar[Backward] = "ste"
    learnable: ClassVar[tuple[str, ...]] = ("scale",)
    threshold_ratio: ClassVar[float] = 0.7

    def param_names(self) -> tuple[str, ...]:
        return ("threshold", "scale")

    @staticmethod
    def _codes(x: Tensor, threshold: Tensor) -> Tensor:
        return torch.sign(x) * (x.abs() >= threshold).to(x.dtype)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = _nonneg(x, signed)
        d = self.threshold_ratio * abs_mean(x, dims)
        t = self._codes(x, d)
        count = t.abs().sum(dim=tuple(dims), keepdim=True).clamp_min(1.0)
        a = (t * x).sum(dim=tuple(dims), keepdim=True) / count
        return {"threshold": d, "scale": a}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        return params["scale"] * self._codes(_nonneg(x, signed), params["threshold"])

    def levels(self, params: Params, signed: bool) -> Tensor:
        a = params["scale"]
        zero = torch.zeros_like(a)
        return torch.stack([-a if signed else zero, zero, a], dim=-1)


@register_scheme
@dataclass
class ResidualBinary(Scheme):
    """R: ``r = 0``; ``bits`` times: ``a_i = mean|x - r|``, ``r += a_i sign(x - r)``.

    Greedy residual binarization (ABC-Net / LQ-style multi-bit binary); ``bits`` terms.
    Unsigned inputs (clamped at zero) start from their mean, ``r = mean(x)``: from zero,
    every sign of a non-negative input would be +1 and the first term would be wasted.
    Not idempotent: the greedy signs need not reproduce a sum of scaled signs.
    """

    name: ClassVar[str] = "residual_binary"
    letter: ClassVar[str] = "R"
    default_backward: ClassVar[Backward] = "ste"
    idempotent: ClassVar[bool] = False
    learnable: ClassVar[tuple[str, ...]] = ()

    def _alphas(self) -> tuple[str, ...]:
        return tuple(f"alpha{i}" for i in range(self.bits))

    def param_names(self) -> tuple[str, ...]:
        return ("offset", *self._alphas())

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = _nonneg(x, signed)
        offset = x.mean(dim=tuple(dims), keepdim=True)
        params: Params = {"offset": torch.zeros_like(offset) if signed else offset}
        r = params["offset"].expand_as(x)
        for name in self._alphas():
            a = abs_mean(x - r, dims)
            params[name] = a
            r = r + a * _sign_no_zero(x - r)
        return params

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        x = _nonneg(x, signed)
        r = params["offset"].expand_as(x)
        for name in self._alphas():
            r = r + params[name] * _sign_no_zero(x - r)
        return r

    def levels(self, params: Params, signed: bool) -> Tensor:
        alphas = torch.stack([params[n] for n in self._alphas()], dim=-1)
        signs = torch.tensor(
            list(itertools.product((-1.0, 1.0), repeat=self.bits)), dtype=alphas.dtype
        ).to(alphas.device)
        return params["offset"].unsqueeze(-1) + alphas @ signs.T
