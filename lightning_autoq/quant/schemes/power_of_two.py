"""Power-of-two (P): logarithmic levels ``a sign(x) 2^k`` of AutoQNN
(https://arxiv.org/abs/2304.03782), after INQ (Zhou et al. 2017).

Quantizing is a few in-place float passes, bit-identical to the plain formula:
``k = clip(round(log2|x/a|), 0, top)`` is counted by comparing ``|x/a|`` with the exact
thresholds where torch's own ``log2`` rounds up (found once per device,
:func:`rounding_points`; ``log2`` is slow on the CPU, very slow at ``log2(0)`` of clamped
activations), and ``2^k`` is multiplied by ``a sign(x)`` (the sign from a float comparison,
not a boolean ``torch.where``). The learned scale's gradient is that of the plain product
``a sign(x) 2^k`` (:func:`scale_times`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autoq.quant.functional import (
    TINY,
    Backward,
    scale_times,
    std,
    std_given_max,
)
from lightning_autoq.quant.schemes.base import Params, Scheme, register_scheme

#: Base-level factors l_1..l_4 (``a = l_b sigma``).
POW2_FACTORS = (1.0, 0.9, 0.4, 0.03)


_POINTS: dict[tuple[str, int | None, torch.dtype, int], tuple[float, ...] | None] = {}
_WINDOW = 64  # floats either side of each 2^(j - 1/2) checked


def rounding_points(top: int, device: torch.device, dtype: torch.dtype) -> tuple[float, ...] | None:
    """``T_j`` (``j = 1..top``): the least ``u`` with ``round(log2(u)) >= j`` in torch's own
    ``log2`` on ``device``, so ``clip(round(log2(u)), 0, top) >= j`` is ``u >= T_j``.

    Found once per device among the float32 values around ``2^(j - 1/2)`` (the half-integer
    logarithm, where round-half-to-even and ``log2``'s last-bit error decide). None where the
    thresholds would not be exact: another dtype, a ``log2`` that is not monotone there, or
    (CPU) vectorised and scalar code paths that disagree; callers then take the logarithm.
    """
    key = (device.type, device.index, dtype, top)
    if key not in _POINTS:
        _POINTS[key] = _find_points(top, device) if dtype == torch.float32 else None
    return _POINTS[key]


def _find_points(top: int, device: torch.device) -> tuple[float, ...] | None:
    points = []
    for j in range(1, top + 1):
        centre = torch.tensor([2.0 ** (j - 0.5)], dtype=torch.float32)
        steps = torch.arange(-_WINDOW, _WINDOW + 1, dtype=torch.int32)
        u = (centre.view(torch.int32) + steps).view(torch.float32).to(device)
        decisions = [torch.round(torch.log2(u.repeat(67))).view(67, -1) >= j]  # vector path
        if device.type == "cpu":  # one element at a time: the scalar path of a loop's tail
            single = [torch.round(torch.log2(u[i : i + 1])) for i in range(u.numel())]
            decisions.append((torch.cat(single) >= j).unsqueeze(0))
        switched = torch.cat(decisions).to(torch.int8)
        first = switched[0]
        # every path, every copy: all False up to one place, all True from there on
        if not bool((switched == first).all()) or int(first[0]) or not int(first[-1]):
            return None
        if not bool((first[1:] >= first[:-1]).all()):
            return None
        points.append(float(u[int(first.argmax())]))
    return tuple(points)


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
        if signed:
            sigma = std(x, dims)
        else:  # clamped at zero (a scratch copy): max|x| is the plain maximum
            x = x.clamp_min(0.0)
            sigma = std_given_max(x, x.amax(dim=tuple(dims), keepdim=True), dims, inplace=True)
        return {"scale": (POW2_FACTORS[self.bits - 1] * sigma).clamp_min(TINY)}

    def _powers(self, ratio: Tensor) -> Tensor:
        """``2^k``, ``k = clip(round(log2(ratio)), 0, top)`` for ``ratio = |x / a|``.

        Leaves ``ratio`` as scratch: overwritten unless the result is a new tensor.
        """
        points = rounding_points(self._top(), ratio.device, ratio.dtype)
        if points is None:  # no exact thresholds known for this device and dtype
            return ratio.log2_().round_().clamp_(0, self._top()).exp2_()
        if not points:  # 1 bit: k = 0, 2^k = 1 (NaN where the ratio is)
            return ratio.clamp_max_(0.0).add_(1.0)
        # k >= j exactly where ratio >= T_j: 2^k = 1 + sum_j 2^(j-1) [ratio >= T_j], exact.
        powers = torch.ge(ratio, points[0], out=torch.empty_like(ratio))
        passed = torch.empty_like(ratio) if len(points) > 1 else powers
        for j, point in enumerate(points[1:], start=2):
            powers.add_(torch.ge(ratio, point, out=passed), alpha=2.0 ** (j - 1))
        # ratio is >= 0 or NaN: adding min(ratio, 0) keeps 2^k and carries a NaN, as log2 does.
        return powers.add_(1.0).add_(ratio.clamp_max_(0.0))

    def _sign_times_powers(self, x: Tensor, a: Tensor, signed: bool, scale: bool) -> Tensor:
        """``(a sign(x)) 2^k`` (``scale``) or ``sign(x) 2^k``, in the plain formula's order."""
        ratio = (x / a).abs_()
        powers = self._powers(ratio)
        out = ratio if powers is not ratio else torch.empty_like(ratio)  # reuse the scratch
        signs = torch.ge(x, 0.0, out=out).mul_(2.0).sub_(1.0) if signed else torch.sign(x, out=out)
        if scale:
            signs.mul_(a)  # a * sign(x): exact
        return signs.mul_(powers)

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        x = x.detach() if signed else x.detach().clamp_min(0.0)
        scale = params["scale"]
        return scale_times(
            scale,
            x,
            lambda x, a: self._sign_times_powers(x, a, signed, scale=True),
            lambda x: self._sign_times_powers(x, scale.detach(), signed, scale=False),
        )

    def levels(self, params: Params, signed: bool) -> Tensor:
        a = params["scale"]
        powers = torch.exp2(torch.arange(self._top() + 1, dtype=a.dtype, device=a.device))
        magnitudes = a.unsqueeze(-1) * powers
        if signed:
            return torch.cat([-magnitudes, magnitudes], dim=-1)
        return torch.cat([torch.zeros_like(a).unsqueeze(-1), magnitudes], dim=-1)
