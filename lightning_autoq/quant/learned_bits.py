"""Learnable bit-widths for uniform quantizers (AutoQNN's precision learning, QPL).

AutoQNN (Gong et al. 2024, https://arxiv.org/abs/2304.03782) gives every quantizer a continuous
bit-width ``b_f`` and quantizes with ``b = round(b_f)``, with a straight-through estimator
through the rounding, so the task loss reaches ``b_f`` through the quantizer's step:
``dL/db_f = sum dL/dq * dq/db``.

:class:`LearnedBits` wraps a :class:`~lightning_autoq.quant.quantizer.Quantizer` of a uniform
scheme (levels ``offset + step (k + shift)``, codes ``k`` in ``[lo(b), hi(b)]``). Its forward
value is exactly the wrapped quantizer's at ``b`` bits; its gradient to ``b_f`` is that of the
continuous relaxation of the grid in ``b``:

* the step: ``d step / d b = step * s(b)``, ``s`` the scheme's log-step slope from
  :data:`BIT_RULES` (``a = L_b sigma``: slope of ``log L_b``; fixed point ``2^-b``: ``-ln 2``;
  zoom ``range / (2^b - 1)``; INT-SE ``max / (2^(b-1) - 1)``), zero for a learned step (LSQ,
  ``range_mode="learned"``): a learned step does not depend on ``b``;
* the code range: clipped values move with the end code, ``d hi / d b = ln2 (hi + 1)``,
  ``d lo / d b = ln2 lo`` (both ``2^(b-1)`` in size for signed codes).

When the rounded width changes, running statistics (activations) are rescaled to the new width
(a ``L_b sigma`` step by ``L_new / L_old``, an exponent by the change of ``log2`` of the range),
so they equal what the scheme estimates at the new width; learned parameters are kept.
The current width is the persistent buffer ``active_bits``, so a checkpoint restores it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_autoq.quant.functional import code_range
from lightning_autoq.quant.quantizer import Quantizer
from lightning_autoq.quant.schemes.base import Params, Scheme, UniformScheme
from lightning_autoq.quant.schemes.gaussian import CLIP_FACTORS, UL2Q_FACTORS
from lightning_autoq.quant.uniform import uniform_fake_quant

LN2 = math.log(2.0)


def _table_slope(table: tuple[float, ...], bits: int) -> float:
    """``d log table[b] / d b`` at integer ``b``: central difference, one-sided at the ends."""
    i = bits - 1
    left, right = max(i - 1, 0), min(i + 1, len(table) - 1)
    return (math.log(table[right]) - math.log(table[left])) / (right - left)


def _clip_slope(bits: int, signed: bool) -> float:
    return _table_slope(CLIP_FACTORS, bits)


def _ul2q_slope(bits: int, signed: bool) -> float:
    return _table_slope(UL2Q_FACTORS, bits)


def _range_slope(bits: int, signed: bool) -> float:
    """``d log (1 / max_code) / d b``: a step ``max / max_code`` (INT-SE)."""
    hi = code_range(bits, signed)[1]
    return -LN2 * (hi + 1) / hi


def _zoom_slope(bits: int, signed: bool) -> float:
    return -LN2 * 2**bits / (2**bits - 1)


def _clip_rescale(params: Params, old: int, new: int, signed: bool) -> None:
    if "scale" in params:
        params["scale"].mul_(CLIP_FACTORS[new - 1] / CLIP_FACTORS[old - 1])


def _ul2q_rescale(params: Params, old: int, new: int, signed: bool) -> None:
    if "scale" in params:
        params["scale"].mul_(UL2Q_FACTORS[new - 1] / UL2Q_FACTORS[old - 1])


def _shift_exponent(params: Params, old: int, new: int, signed: bool) -> None:
    if "exponent" in params:
        params["exponent"].sub_(new - old)


def _shift_exponent_by_range(params: Params, old: int, new: int, signed: bool) -> None:
    if "exponent" in params:
        hi_old, hi_new = code_range(old, signed)[1], code_range(new, signed)[1]
        params["exponent"].add_(round(math.log2(hi_old / hi_new)))


def _keep(params: Params, old: int, new: int, signed: bool) -> None:
    return None


def _fixed_point_slope(bits: int, signed: bool) -> float:
    return -LN2


def _no_slope(bits: int, signed: bool) -> float:
    return 0.0


@dataclass(frozen=True)
class BitRule:
    """How a uniform scheme's step follows its bit-width.

    Args:
        log_step_slope: ``(bits, signed) -> d log(step) / d bits`` at an integer width, for a
            step computed from statistics.
        step_param: the scheme parameter that is the step; when it is learned the step does
            not depend on the width (slope 0). None: the step is always derived (zoom).
        rescale: ``(running params, old, new, signed)``: adapt running statistics in place.
    """

    log_step_slope: Callable[[int, bool], float]
    step_param: str | None
    rescale: Callable[[Params, int, int, bool], None]


#: The uniform schemes whose bit-width can be learned.
BIT_RULES: dict[str, BitRule] = {
    "clip": BitRule(_clip_slope, "scale", _clip_rescale),
    "ul2q": BitRule(_ul2q_slope, "scale", _ul2q_rescale),
    "fixed_point": BitRule(_fixed_point_slope, "exponent", _shift_exponent),
    "int_se": BitRule(_range_slope, "exponent", _shift_exponent_by_range),
    "zoom": BitRule(_zoom_slope, None, _keep),
    "lsq": BitRule(_no_slope, "scale", _keep),
}


def learnable_bit_range(scheme: str | Scheme, min_bits: int, max_bits: int) -> tuple[int, int]:
    """``[min_bits, max_bits]`` clamped into the scheme's own range; errors for fixed widths."""
    name = scheme if isinstance(scheme, str) else scheme.name
    if name not in BIT_RULES:
        raise ValueError(
            f"scheme {name!r} cannot learn its bit-width; allowed: uniform schemes "
            f"{', '.join(sorted(BIT_RULES))}"
        )
    from lightning_autoq.quant.schemes import scheme_class

    lo_s, hi_s = scheme_class(name).bit_range
    lo, hi = max(min_bits, lo_s), min(max_bits, hi_s)
    if lo > hi:
        raise ValueError(
            f"scheme {name!r} allows {lo_s}..{hi_s} bits, outside min_bits={min_bits}.."
            f"max_bits={max_bits}"
        )
    return lo, hi


def round_bits(value: float, lo: int, hi: int) -> int:
    """The width a continuous ``value`` gives: clamped to ``[lo, hi]``, rounded half up."""
    return math.floor(min(max(value, lo), hi) + 0.5)


class LearnedBits(nn.Module):
    """A uniform quantizer whose bit-width is the learnable parameter ``bits_float``.

    Forward: the wrapped quantizer at ``b = round(clamp(bits_float, lo, hi))`` bits (bit-exact),
    plus, while learning (training, ``bits_float.requires_grad``, not ``frozen``), the gradient
    to ``bits_float`` described in the module docstring (STE through clamp and round). The
    attributes SchemeSearch and the layers read (``scheme``, ``bits``, ``kind``, ``signed``,
    ``parameters_for``...) are the wrapped quantizer's, so the wrapper can stand in a
    :class:`~lightning_autoq.quant.mixture.SchemeMixture` or a layer.

    Args:
        quantizer: a quantizer of a scheme in :data:`BIT_RULES`.
        min_bits: smallest width (clamped up to the scheme's smallest).
        max_bits: largest width (clamped down to the scheme's largest).
        bits: a shared ``bits_float`` parameter (several candidates of one tensor); None
            creates one at the quantizer's width.

    Example:
        >>> q = LearnedBits(Quantizer("clip", 4, kind="weight"), 2, 8)
        >>> w = torch.randn(16, 8)
        >>> q(w).sum().backward()
        >>> q.bits, q.bits_float.grad is not None
        (4, True)
    """

    def __init__(
        self,
        quantizer: Quantizer,
        min_bits: int = 1,
        max_bits: int = 8,
        bits: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(quantizer, Quantizer) or not isinstance(quantizer.scheme, UniformScheme):
            what = getattr(getattr(quantizer, "scheme", None), "name", type(quantizer).__name__)
            raise ValueError(
                f"scheme {what!r} cannot learn its bit-width; allowed: uniform schemes "
                f"{', '.join(sorted(BIT_RULES))}"
            )
        self.min_bits, self.max_bits = learnable_bit_range(quantizer.scheme, min_bits, max_bits)
        self.quantizer = quantizer
        start = round_bits(quantizer.bits, self.min_bits, self.max_bits)
        if bits is None:
            bits = nn.Parameter(torch.tensor(float(start)))
        self.bits_float = bits
        self.register_buffer("active_bits", torch.tensor(start, dtype=torch.long))
        self.register_buffer("frozen", torch.tensor(False))
        self._set_scheme(start)

    # ------------------------------------------------------------------ the quantizer's face
    @property
    def scheme(self) -> Scheme:
        self._set_scheme(int(self.active_bits))
        return self.quantizer.scheme

    @property
    def rule(self) -> BitRule:
        return BIT_RULES[self.quantizer.scheme.name]

    @property
    def bits(self) -> int:
        return int(self.active_bits)

    @property
    def kind(self) -> str:
        return self.quantizer.kind

    @property
    def range_mode(self) -> str:
        return self.quantizer.range_mode

    @property
    def channels(self) -> int | None:
        return self.quantizer.channels

    @property
    def backward(self) -> str:
        return self.quantizer.backward

    @property
    def grad_ratio(self) -> float:
        return self.quantizer.grad_ratio

    def signed(self, x: Tensor | None = None) -> bool:
        return self.quantizer.signed(x)

    def parameters_for(self, x: Tensor) -> Params:
        self.follow_bits()
        return self.quantizer.parameters_for(x)

    # ------------------------------------------------------------------ bits
    def target_bits(self) -> int:
        """The width ``bits_float`` asks for now."""
        return round_bits(float(self.bits_float.detach()), self.min_bits, self.max_bits)

    def rounded_bits(self) -> Tensor:
        """``round(clamp(bits_float))`` as a tensor with the STE gradient 1 to ``bits_float``."""
        b = self.bits_float
        target = float(self.target_bits())
        return b + (torch.full_like(b, target) - b).detach()

    def _set_scheme(self, bits: int) -> None:
        scheme = self.quantizer.scheme
        if scheme.bits != bits:
            self.quantizer.scheme = dataclasses.replace(scheme, bits=bits)

    @torch.no_grad()
    def follow_bits(self) -> None:
        """Move the quantizer to the width ``bits_float`` gives, rescaling running statistics."""
        old = int(self.active_bits)
        self._set_scheme(old)  # after a checkpoint load: the restored width, no rescale
        new = self.target_bits()
        if new == old:
            return
        q = self.quantizer
        if bool(q.initialized) and q._running:
            signed = int(q.signed_state) == 1
            self.rule.rescale({n: getattr(q, n) for n in q._running}, old, new, signed)
        self._set_scheme(new)
        self.active_bits.fill_(new)

    def learning(self) -> bool:
        return (
            self.training
            and self.bits_float.requires_grad
            and not bool(self.frozen)
            and torch.is_grad_enabled()
        )

    def forward(self, x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        self.follow_bits()
        q = self.quantizer
        if not self.learning():
            return q(x)
        params = q.parameters_for(x)
        signed = q.signed()
        grid = q.scheme.grid(params, signed)  # type: ignore[attr-defined]
        b = self.rounded_bits()
        delta = b - b.detach()  # 0, with gradient 1 to bits_float
        step = grid.step
        learned_step = self.rule.step_param is not None and self.rule.step_param in q._learned
        slope = 0.0 if learned_step else self.rule.log_step_slope(self.bits, signed)
        if slope:
            step = step * torch.exp(slope * delta.to(step.dtype))  # value unchanged
        xf = x.float()
        out = uniform_fake_quant(
            xf,
            dataclasses.replace(grid, step=step),
            clipped=q.backward == "clipped",
            ratio=q.grad_ratio,
        )
        with torch.no_grad():  # the end codes move with b: d hi/db = ln2 (hi+1), d lo/db = ln2 lo
            centred = xf if grid.offset is None else xf - grid.offset
            v = centred / grid.step - grid.shift
            coef = (
                grid.step.detach() * LN2 * ((grid.hi + 1) * (v > grid.hi) + grid.lo * (v < grid.lo))
            )
        out = out + coef * delta
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        state = "frozen" if bool(self.frozen) else f"bits_float={float(self.bits_float):.3f}"
        return f"bits={self.bits} in [{self.min_bits}, {self.max_bits}], {state}"


def learned_bits_modules(model: nn.Module) -> list[tuple[str, LearnedBits]]:
    """``(name, module)`` of every :class:`LearnedBits` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LearnedBits)]


def strip_learned_bits(model: nn.Module) -> nn.Module:
    """Replace every :class:`LearnedBits` by its quantizer at the current width, in place.

    The model's outputs do not change, and its state dict matches a model built by ``convert``
    from the learned policy (run :func:`~lightning_autoq.quant.mixture.collapse` first when
    SchemeSearch cells are present).
    """
    for name, module in learned_bits_modules(model):
        module.follow_bits()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.ModuleList):
            parent[int(attr)] = module.quantizer
        else:
            setattr(parent, attr, module.quantizer)
    return model


__all__ = [
    "BIT_RULES",
    "BitRule",
    "LearnedBits",
    "learnable_bit_range",
    "learned_bits_modules",
    "round_bits",
    "strip_learned_bits",
]
