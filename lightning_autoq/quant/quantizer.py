"""The quantizer module: a scheme plus the state it needs on one tensor of one layer."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_autoq.quant.finite import check_finite
from lightning_autoq.quant.functional import BACKWARD_MODES, Backward, attach_gradient, grad_scale
from lightning_autoq.quant.schemes import Params, make_scheme
from lightning_autoq.quant.schemes.base import Scheme, UniformScheme
from lightning_autoq.quant.uniform import uniform_fake_quant

Kind = Literal["weight", "activation"]
RangeMode = Literal["dynamic", "running", "learned"]
QuantizerBackward = Literal["ste", "clipped", "scheme"]
KINDS: tuple[str, ...] = ("weight", "activation")
RANGE_MODES: dict[str, tuple[str, ...]] = {
    "weight": ("dynamic", "learned"),
    "activation": ("running", "learned"),
}
#: The scheme's own input gradient (schemes with ``differentiable_input``).
SCHEME_BACKWARD = "scheme"
_AUTO, _UNSIGNED, _SIGNED = -1, 0, 1


class Quantizer(nn.Module):
    """Fake-quantizes one tensor with a registered scheme.

    Where the scheme's parameters come from (``range_mode``):

    * ``"dynamic"`` (weights' default): recomputed from the tensor at every call.
    * ``"running"`` (activations' default; weights' for schemes with ``running_weights``,
      LQ-Nets): an exponential moving average (``ema_decay`` 0.9) towards the scheme's
      :meth:`~lightning_autoq.quant.schemes.base.Scheme.refine` of the batch, updated in
      training and used as-is in eval; the first batch initialises it, in eval too
      (calibration). A weight's running parameters move only in training forwards with
      autograd on (one per step), so no-grad passes (BN re-estimation, callbacks reading the
      levels) leave them alone.
    * ``"learned"``: the scheme's learnable parameters (a step, a range) are
      ``nn.Parameter``\\ s initialised from the first batch, their gradient scaled by
      ``1 / sqrt(N Q_P)`` as in LSQ unless the scheme sets ``lsq_grad_scale = False`` (PACT,
      APoT, N2UQ: the paper's gradient); the others stay dynamic or running.

    The input gradient (``backward``): ``"ste"`` or ``"clipped"`` attach a surrogate gradient
    to a detached input (see :func:`~lightning_autoq.quant.functional.attach_gradient`);
    ``"scheme"`` (the default of schemes with ``differentiable_input``: PACT, DoReFa, APoT,
    N2UQ) hands the scheme the live input, so its paper's gradient reaches it (DoReFa's
    through ``tanh`` and the normaliser, APoT's ``1 / std``, N2UQ's interval slopes), and
    dynamic parameters are estimated from the live input too. ``grad_ratio`` multiplies the
    input gradient in every mode. Computation is float32 and the result is cast back to the
    input's dtype.

    Args:
        scheme: a name from :func:`lightning_autoq.available_schemes`.
        bits: bit-width, within the scheme's range.
        kind: ``"weight"`` or ``"activation"``.
        signed: two's-complement codes (True), unsigned codes (False) or, for activations,
            ``None``: decided once from the first batch (unsigned when it has no negative value).
        channels: number of channels for per-channel parameters (weights only); None = per tensor.
        channel_axis: the channel dimension of the weight (0; 1 for transposed convolutions).
        range_mode: see above; None picks the default for ``kind`` and the scheme.
        backward: ``"ste"``, ``"clipped"`` or ``"scheme"`` (schemes with
            ``differentiable_input`` only); None: ``"scheme"`` where allowed, else the
            scheme's ``default_backward``.
        grad_ratio: factor on the input gradient (AutoQNN's piecewise-linear ratio ``g``).
        ema_decay: decay of the running statistics.
        **scheme_options: extra scheme arguments (e.g. ``candidates`` of ``int_se``).

    Example:
        >>> q = Quantizer("clip", 4, kind="weight", channels=8)
        >>> q(torch.randn(8, 3, 3, 3)).shape
        torch.Size([8, 3, 3, 3])
    """

    def __init__(
        self,
        scheme: str,
        bits: int,
        *,
        kind: Kind = "weight",
        signed: bool | None = True,
        channels: int | None = None,
        channel_axis: int = 0,
        range_mode: RangeMode | None = None,
        backward: QuantizerBackward | Backward | None = None,
        grad_ratio: float = 1.0,
        ema_decay: float = 0.9,
        **scheme_options: object,
    ) -> None:
        super().__init__()
        self.scheme = make_scheme(scheme, bits, **scheme_options)
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}")
        self.kind = kind
        modes = range_modes(self.scheme, kind)
        if range_mode is None:
            default = "running" if "running" in modes else "dynamic"
            range_mode = "learned" if self.scheme.needs_learned else default
        if range_mode not in modes:
            raise ValueError(
                f"range_mode={range_mode!r} is not allowed for {kind}s of scheme {scheme!r}; "
                f"allowed: {', '.join(modes)}"
            )
        if self.scheme.needs_learned and range_mode != "learned":
            raise ValueError(
                f"range_mode={range_mode!r} is not allowed for scheme {scheme!r}, which learns "
                "its range; allowed: 'learned'"
            )
        if range_mode == "learned" and not self.scheme.learnable:
            raise ValueError(
                f"range_mode='learned' is not allowed for scheme {scheme!r}, which has no "
                f"learnable parameter; allowed: "
                f"{', '.join(repr(m) for m in modes if m != 'learned')}"
            )
        self.range_mode = range_mode
        backwards = BACKWARD_MODES
        if self.scheme.differentiable_input:
            backwards = (*BACKWARD_MODES, SCHEME_BACKWARD)
        if backward is None:
            differentiable = self.scheme.differentiable_input
            backward = SCHEME_BACKWARD if differentiable else self.scheme.default_backward
        if backward not in backwards:
            raise ValueError(
                f"backward={backward!r} is not allowed for scheme {scheme!r}; "
                f"allowed: {', '.join(backwards)}"
            )
        self.backward: str = backward
        if isinstance(grad_ratio, bool) or not (grad_ratio > 0 and math.isfinite(grad_ratio)):
            raise ValueError(
                f"grad_ratio={grad_ratio!r} is not allowed; allowed: a finite value > 0"
            )
        self.grad_ratio = float(grad_ratio)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} is not allowed; allowed: [0, 1)")
        self.ema_decay = float(ema_decay)
        if signed not in (None, True, False):
            raise ValueError(f"signed={signed!r} is not allowed; allowed: True, False, None")
        if signed is None and kind == "weight":
            raise ValueError("signed=None (decide from data) is for activations; weights: True")
        if channels is not None and kind != "weight":
            raise ValueError(
                f"channels={channels} is not allowed for activations (per tensor only); "
                "allowed: None"
            )
        if channels is not None and channels < 1:
            raise ValueError(f"channels={channels} is not allowed; allowed: >= 1 or None")
        self.channels = channels
        self.channel_axis = channel_axis

        state = {None: _AUTO, False: _UNSIGNED, True: _SIGNED}[signed]
        self.register_buffer("signed_state", torch.tensor(state, dtype=torch.int8))
        self.register_buffer("initialized", torch.tensor(False))
        shape = () if channels is None else (channels,)
        self._learned: tuple[str, ...] = ()
        self._running: tuple[str, ...] = ()
        for name in self.scheme.param_names():
            if range_mode == "learned" and name in self.scheme.learnable:
                self.register_parameter(name, nn.Parameter(torch.ones(shape)))
                self._learned += (name,)
            elif kind == "activation" or range_mode == "running":
                self.register_buffer(name, torch.zeros(shape))
                self._running += (name,)

    @property
    def bits(self) -> int:
        return self.scheme.bits

    @property
    def stateful(self) -> bool:
        """Whether parameters are stored (running or learned) rather than recomputed."""
        return bool(self._learned or self._running)

    def signed(self, x: Tensor | None = None) -> bool:
        """The code signedness; for ``signed=None`` it is fixed by the first ``x`` seen."""
        state = int(self.signed_state)
        if state == _AUTO:
            if x is None:
                raise RuntimeError("signedness is decided by the first batch; none seen yet")
            state = _SIGNED if bool((x < 0).any()) else _UNSIGNED
            self.signed_state.fill_(state)
        return state == _SIGNED

    def _reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        if self.channels is None:
            return tuple(range(x.dim()))
        axis = self.channel_axis % x.dim()
        if x.shape[axis] != self.channels:
            raise ValueError(
                f"expected {self.channels} channels on axis {axis}, got shape {tuple(x.shape)}"
            )
        return tuple(d for d in range(x.dim()) if d != axis)

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        if self.channels is None:
            return p
        shape = [1] * x.dim()
        shape[self.channel_axis % x.dim()] = self.channels
        return p.view(shape)

    def _grad_scale(self, x: Tensor) -> float:
        per_value = x.numel() // max(self.channels or 1, 1)
        if self.kind == "activation" and x.dim() > 1:
            per_value = x[0].numel()
        return 1.0 / math.sqrt(max(per_value, 1) * self.scheme.max_code(self.signed()))

    def _moves_running(self) -> bool:
        """Whether running parameters are updated now (weights: only with autograd on)."""
        if not (self._running and self.training):
            return False
        return self.kind == "activation" or torch.is_grad_enabled()

    def parameters_for(self, x: Tensor) -> Params:
        """The scheme parameters used to quantize ``x`` (updating running ones in training).

        Dynamic parameters keep their gradient to ``x`` for ``backward="scheme"`` (the
        paper's gradient through the statistics, e.g. DoReFa's ``max |tanh(x)|``); every
        other estimate is computed from ``x.detach()``.
        """
        source = x.float()
        x = source.detach()
        first = self.stateful and not bool(self.initialized)
        if first:  # calibrating on NaN/Inf would store a NaN range for good: refuse it, once
            what = "the input" if self.kind == "activation" else "the weight"
            check_finite(x, f"{what} of the first batch ({self.scheme.name}, {self.bits} bits)")
        signed = self.signed(x)
        dims = self._reduce_dims(x)
        moving = not first and self._moves_running()
        stored_names = self._learned + self._running
        dynamic = [n for n in self.scheme.param_names() if n not in stored_names]
        fresh: Params = {}
        if first or moving or dynamic:
            basis = source if dynamic and self.backward == SCHEME_BACKWARD else x
            if moving:
                previous = {n: self._view(getattr(self, n), x) for n in self._running}
                fresh = self.scheme.refine(basis, previous, signed, dims)
            else:
                fresh = self.scheme.estimate(basis, signed, dims)
        params: Params = {}
        for name in self.scheme.param_names():
            if name not in stored_names:
                params[name] = fresh[name]
                continue
            if first or (moving and name in self._running):
                self._update(name, fresh[name], first)
            stored = getattr(self, name)
            if name in self._learned and self.scheme.lsq_grad_scale:
                stored = grad_scale(stored, self._grad_scale(x))
            params[name] = self._view(stored, x)
        if first:
            self.initialized.fill_(True)
        return params

    @torch.no_grad()
    def _update(self, name: str, value: Tensor, first: bool) -> None:
        stored = getattr(self, name)
        value = value.reshape(stored.shape).to(stored.dtype)
        if first:
            stored.copy_(value)
        else:
            stored.lerp_(value, 1.0 - self.ema_decay)

    def forward(self, x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return self.quantize_with_params(x)[0]

    def quantize_with_params(self, x: Tensor) -> tuple[Tensor, Params]:
        """The fake-quantized ``x`` and the scheme parameters it used (e.g. an INT-SE exponent).

        Callers that need the parameters too (the INT-SE bias window) get them without a
        second estimate.
        """
        if self.backward == SCHEME_BACKWARD:  # the scheme's own gradient to the live input
            source = x.float()
            if self.grad_ratio != 1.0:
                source = grad_scale(source, self.grad_ratio)
            params = self.parameters_for(source)
            return self.scheme.quantize(source, params, self.signed()).to(x.dtype), params
        params = self.parameters_for(x)
        signed = self.signed()
        if isinstance(self.scheme, UniformScheme):  # one fused node for value and gradients
            grid = self.scheme.grid(params, signed)
            clipped = self.backward == "clipped"
            out = uniform_fake_quant(x.float(), grid, clipped=clipped, ratio=self.grad_ratio)
            return out.to(x.dtype), params
        q = self.scheme.quantize(x.detach().float(), params, signed)
        lo = hi = None
        if self.backward == "clipped":
            lo, hi = self.scheme.bounds(params, signed)
            lo, hi = lo.detach(), hi.detach()
        out = attach_gradient(x.float(), q, self.backward, self.grad_ratio, lo, hi)
        return out.to(x.dtype), params

    def extra_repr(self) -> str:
        parts = [f"{self.scheme.name}", f"bits={self.bits}", f"kind={self.kind}"]
        parts.append("per_tensor" if self.channels is None else f"channels={self.channels}")
        parts.append(f"range={self.range_mode}")
        return ", ".join(parts)


def range_modes(scheme: Scheme, kind: str) -> tuple[str, ...]:
    """The ``range_mode`` values allowed for ``kind`` tensors of ``scheme``."""
    modes = RANGE_MODES[kind]
    if kind == "weight" and scheme.running_weights:
        modes = ("dynamic", "running", "learned")
    return modes
