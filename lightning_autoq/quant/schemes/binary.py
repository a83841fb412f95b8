"""Binary-family schemes of AutoQNN: binary (B), ternary (T) and residual binary (R).

Gong et al., AutoQNN, J. Comput. Sci. Technol. 39(2), 2024, https://arxiv.org/abs/2304.03782.
These level sets have no fixed grid, so the input gradient is the plain STE (identity).
Unsigned inputs (``signed=False``) are clamped at zero first, so their levels are the
non-negative part of the signed set (and zero).

The formulas are written as few float tensor passes into few fresh tensors (scratch tensors
are reused: a fresh large tensor costs more than a pass), bit-identical to the plain ones:
masks are comparisons written straight into float tensors (boolean tensors and
``torch.where`` cost several times more on the CPU), ``sign(x) [|x| >= d]`` is
``[|x| >= d']`` with the sign of ``x`` copied on and ``d'`` raised above zero, ``x - r >= 0``
is ``x >= r`` (a difference of finite floats is zero only when they are equal), and a
product with a code in ``{-1, 0, 1}`` is exact in any order. The gradient to a learned scale
is that of the plain product (:func:`scale_times`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import (
    Backward,
    above_zero,
    ge_mask,
    mean_of_magnitudes,
    scale_times,
    sign_no_zero,
)
from lightning_autoq.quant.schemes.base import Params, Scheme, register_scheme


def _nonneg(x: Tensor, signed: bool) -> Tensor:
    return x if signed else x.clamp_min(0.0)


def _magnitudes(x: Tensor, signed: bool) -> Tensor:
    """``|x|`` of the (clamped) input, as a fresh tensor the caller may overwrite."""
    return x.abs() if signed else x.clamp_min(0.0)


def _greedy_step(x: Tensor, r: Tensor, a: Tensor, scratch: Tensor, *, owned: bool) -> Tensor:
    """``r + a * sign_no_zero(x - r)`` of residual binarization, in four float passes.

    ``x - r >= 0`` is ``x >= r`` (no subtraction), and ``a * +-1`` is exact, so ``r + s a``
    rounds once, as ``r + a * s`` does. The signs go to ``scratch`` (a tensor like ``x``, not
    ``r``). ``owned``: ``r`` is full-size and updated in place; otherwise ``r`` broadcasts (the
    offset) and the sum is written over the signs in ``scratch``, which is returned.
    """
    signs = torch.ge(x, r, out=scratch).mul_(2.0).sub_(1.0)
    return r.addcmul_(signs, a) if owned else torch.addcmul(r, signs, a, out=signs)


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
        a = mean_of_magnitudes(_magnitudes(x, signed), dims, inplace=True)
        return {"scale": a if signed else 2 * a}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        if signed:
            codes = sign_no_zero
        else:
            half = params["scale"].detach() / 2

            def codes(x: Tensor) -> Tensor:
                return ge_mask(x, half)

        return scale_times(params["scale"], x, lambda x, a: codes(x).mul_(a), codes)

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
    def _codes(x: Tensor, threshold: Tensor, signed: bool) -> Tensor:
        """``sign(x) [|x| >= d]`` of the (clamped) input, in one new tensor.

        ``[|x| >= d'] copysign x`` with ``d'`` above zero (so a zero input gets code 0); a
        clamped input is ``>= d' > 0`` exactly where ``x`` is.
        """
        d = above_zero(threshold)
        if not signed:
            return ge_mask(x, d)
        codes = torch.abs(x)
        return torch.copysign(torch.ge(codes, d, out=codes), x, out=codes)

    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        dims = tuple(dims)
        ax = _magnitudes(x, signed)
        scratch = torch.empty_like(ax)
        d = self.threshold_ratio * mean_of_magnitudes(ax, dims, out=scratch)
        # |t| = [|x| >= d] [x != 0] and t x = |x| |t|: one mask gives both sums.
        kept = torch.ge(ax, above_zero(d), out=scratch)
        count = kept.sum(dim=dims, keepdim=True).clamp_min(1.0)
        # A NaN or infinite |x| is never kept, and 0 * |x| is NaN there, as t x is.
        a = kept.mul_(ax).sum(dim=dims, keepdim=True) / count
        return {"threshold": d, "scale": a}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        threshold = params["threshold"].detach()

        def codes(x: Tensor) -> Tensor:
            return self._codes(x, threshold, signed)

        return scale_times(params["scale"], x, lambda x, a: codes(x).mul_(a), codes)

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
        dims = tuple(dims)
        x = _nonneg(x, signed)
        offset = None if signed else x.mean(dim=dims, keepdim=True)
        names = self._alphas()
        alphas: Params = {}
        scratch = torch.empty_like(x)
        r = offset  # the greedy sum: small (offset), then full-size; None is the signed r = 0
        for i, name in enumerate(names):
            if r is None:  # |x - 0| needs no subtraction
                residual = torch.abs(x, out=scratch)
            else:
                residual = torch.sub(x, r, out=scratch).abs_()
            alphas[name] = a = mean_of_magnitudes(residual, dims, inplace=True)
            if r is None:
                r = offset = torch.zeros_like(a)
            if i + 1 < len(names):
                if i > 0:
                    r = _greedy_step(x, r, a, scratch, owned=True)
                else:  # the full-size sum: in the scratch tensor if only |x - r| follows
                    last = i + 2 == len(names)
                    target = scratch if last else torch.empty_like(x)
                    r = _greedy_step(x, r, a, target, owned=False)
        assert offset is not None
        return {"offset": offset, **alphas}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        copied = not signed  # the clamped input is this call's own tensor
        x = _nonneg(x, signed)
        needs_graph = x.requires_grad or any(p.requires_grad for p in params.values())
        if needs_graph and torch.is_grad_enabled():
            return self._quantize_differentiable(x, params)
        names = self._alphas()
        r = params["offset"]
        scratch = None
        for i, name in enumerate(names):
            if i == 0:  # the first sum goes to a new tensor: the result
                r = _greedy_step(x, r, params[name], torch.empty_like(x), owned=False)
                continue
            if scratch is None:  # the last comparison may overwrite a clamped copy
                scratch = x if copied and i + 1 == len(names) else torch.empty_like(x)
            r = _greedy_step(x, r, params[name], scratch, owned=True)
        return r

    def _quantize_differentiable(self, x: Tensor, params: Params) -> Tensor:
        """The greedy sum as autograd records it (for inputs that need a gradient)."""
        r = params["offset"].expand_as(x)
        for name in self._alphas():
            r = r + params[name] * sign_no_zero(x.detach() - r.detach())
        return r

    def levels(self, params: Params, signed: bool) -> Tensor:
        alphas = torch.stack([params[n] for n in self._alphas()], dim=-1)
        signs = torch.tensor(
            list(itertools.product((-1.0, 1.0), repeat=self.bits)), dtype=alphas.dtype
        ).to(alphas.device)
        return params["offset"].unsqueeze(-1) + alphas @ signs.T
