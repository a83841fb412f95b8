"""Quantized layers: subclasses of the float layers that keep their parameter names.

A quantized layer holds three :class:`~lightning_autoq.quant.Quantizer` submodules,
``weight_quant``, ``act_quant`` (its input) and ``bias_quant``, built from a
:class:`~lightning_autoq.convert.policy.LayerConfig`. Because the float parameters keep their
names (``weight``, ``bias``), a float state dict loads into the quantized model and back.

IOIQ support (Yang et al. 2023): when weights and inputs are both INT-SE, the bias is an
:class:`IntSEBias` whose exponent is restricted to ``[s_in + s_w, s_in + s_w + 7]``; and a
layer followed by a batch norm can be given that BN (:meth:`QuantLayer.attach_batchnorm`)
and, once ``bn_locked``, computes with the folded (then quantized) weight and bias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_autoq.export.fold import fold_batchnorm
from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.finite import NonFiniteError
from lightning_autoq.quant.functional import exponent_quantize, shared_exponent
from lightning_autoq.quant.incremental import IncrementalWeight
from lightning_autoq.quant.mixture import SchemeMixture

if TYPE_CHECKING:
    from lightning_autoq.convert.policy import LayerConfig


#: Width of the bias exponent window above the accumulator exponent ``s_in + s_w`` (IOIQ).
BIAS_SHIFT_RANGE = 7


class IntSEBias(nn.Module):
    """INT-SE bias of IOIQ: exponent restricted to ``[s_acc, s_acc + 7]``, ``s_acc = s_in + s_w``.

    The bias is then added to the integer accumulator (exponent ``s_acc``) with a left shift
    of at most 7. Within that window the exponent is the minimum-MSE one
    (:func:`~lightning_autoq.quant.functional.shared_exponent`). Without ``s_acc`` (None: the
    weight or input quantizer in use has no power-of-two exponent, e.g. a scheme-search cell
    that sampled another scheme) the bias gets its own minimum-MSE exponent, unwindowed.
    Stateless: nothing is saved.

    Args:
        bits: bias code width (signed).
        candidates: exponents searched by the minimum-MSE rule.

    Example:
        >>> q = IntSEBias(8)
        >>> q(torch.tensor([0.3, -1.2]), torch.tensor(-10.0)).shape
        torch.Size([2])
    """

    def __init__(self, bits: int, candidates: int = 4) -> None:
        super().__init__()
        Quantizer("int_se", bits, kind="weight", candidates=candidates)  # validates both
        self.bits = bits
        self.candidates = candidates

    def exponent(self, bias: Tensor, s_acc: Tensor | None) -> Tensor:
        """The bias exponent: per tensor (``s_acc`` has one value or is None) or per channel."""
        if s_acc is None:
            b = bias.detach().float().reshape(1, -1)
            return shared_exponent(b, self.bits, True, (1,), self.candidates).reshape(())
        s_acc = torch.round(s_acc.detach().float()).reshape(-1)
        b = bias.detach().float()
        b = b.reshape(1, -1) if s_acc.numel() == 1 else b.reshape(-1, 1)
        s = shared_exponent(b, self.bits, True, (1,), self.candidates).reshape(-1)
        s = torch.minimum(torch.maximum(s, s_acc), s_acc + BIAS_SHIFT_RANGE)
        return s if s_acc.numel() > 1 else s.reshape(())

    def forward(self, bias: Tensor, s_acc: Tensor | None) -> Tensor:
        s = self.exponent(bias, s_acc)
        return exponent_quantize(bias.float(), s, self.bits, True).to(bias.dtype)

    def extra_repr(self) -> str:
        return f"int_se, bits={self.bits}, window=[s_in+s_w, s_in+s_w+{BIAS_SHIFT_RANGE}]"


def _has_exponent(q: object) -> bool:
    return isinstance(q, Quantizer) and "exponent" in q.scheme.param_names()


def quantize_weight(weight_quant: nn.Module, weight: Tensor) -> tuple[Tensor, Tensor | None]:
    """``weight_quant(weight)`` and the weight exponent ``s_w`` it used, computed once.

    ``s_w`` is None unless one power-of-two quantizer (INT-SE, fixed point) produced the
    result: through :class:`~lightning_autoq.quant.incremental.IncrementalWeight` (its fixed
    grid once started) and :class:`~lightning_autoq.quant.mixture.SchemeMixture` (the fixed or
    sampled candidate; a soft mixture has none).
    """
    if isinstance(weight_quant, SchemeMixture):
        index, st_weight = weight_quant.select()
        weight_quant.last_index = index
        if index is None:
            return weight_quant(weight), None  # type: ignore[return-value]
        out, s_w = quantize_weight(weight_quant.candidates[index], weight)
        return weight_quant.scale(out, st_weight), s_w
    if isinstance(weight_quant, IncrementalWeight):
        if bool(weight_quant.started):
            return weight_quant(weight), weight_quant.grid().get("exponent")  # type: ignore[return-value]
        return quantize_weight(weight_quant.quantizer, weight)
    if _has_exponent(weight_quant):
        out, params = weight_quant.quantize_with_params(weight)  # type: ignore[operator]
        return out, params["exponent"]
    return weight_quant(weight), None  # type: ignore[return-value]


def _active_quantizer(q: nn.Module | None) -> nn.Module | None:
    """The plain quantizer a (fixed or sampled) search cell ran last; else ``q`` itself."""
    if isinstance(q, SchemeMixture):
        index = int(q.chosen) if q.fixed else q.last_index
        return None if index is None else q.candidates[index]
    return q


def input_exponent(act_quant: nn.Module | None) -> Tensor | None:
    """``s_in``: the running exponent of the input quantizer in use (rounded), or None."""
    q = _active_quantizer(act_quant)
    return torch.round(q.exponent) if _has_exponent(q) else None  # type: ignore[union-attr]


def weight_exponent(weight_quant: nn.Module, weight: Tensor) -> Tensor | None:
    """``s_w`` of ``weight`` under the weight quantizer in use, without quantizing it."""
    q = _active_quantizer(weight_quant)
    if isinstance(q, IncrementalWeight):
        exponent = q.parameters_for(weight).get("exponent")
    elif _has_exponent(q):
        exponent = q.parameters_for(weight)["exponent"]  # type: ignore[union-attr, operator]
    else:
        return None
    return None if exponent is None else exponent.detach()


def _uses_int_se_bias(config: LayerConfig) -> bool:
    act_scheme = config.act_scheme or config.scheme
    return config.scheme == "int_se" and config.act_bits is not None and act_scheme == "int_se"


def _bn_locked(bn: nn.Module) -> bool:
    layer = bn.__dict__.get("_autoq_folded_into")
    return layer is not None and bool(layer.bn_locked)


def _bn_pre_hook(bn: nn.Module, args: tuple[Any, ...]) -> None:
    """While locked, run the BN in eval form so its running statistics stay frozen."""
    if bn.training and _bn_locked(bn):
        bn.training = False
        bn.__dict__["_autoq_was_training"] = True


def _bn_hook(bn: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
    """While locked, the BN passes its input through (the layer before it is folded)."""
    if bn.__dict__.pop("_autoq_was_training", False):
        bn.training = True
    return args[0] if _bn_locked(bn) else None


class QuantLayer:
    """Mixin of every quantized layer: quantizers, conversion to and from the float layer."""

    float_class: ClassVar[type[nn.Module]]
    channel_axis: ClassVar[int] = 0  # output-channel axis of the weight
    config: LayerConfig
    weight_quant: Quantizer
    act_quant: Quantizer | None
    bias_quant: Quantizer | IntSEBias | None
    bn_locked: Tensor

    @classmethod
    def _constructor_args(cls, module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    def _init_quantizers(self, config: LayerConfig) -> None:
        self.config = config
        weight: Tensor = self.weight  # type: ignore[attr-defined]
        channels = weight.shape[self.channel_axis] if config.granularity == "channel" else None
        common = {"backward": config.backward, "grad_ratio": config.grad_ratio}
        self.weight_quant = Quantizer(
            config.scheme,
            config.weight_bits,
            kind="weight",
            channels=channels,
            channel_axis=self.channel_axis,
            **common,
            **config.scheme_options,
        )
        self.act_quant = None
        if config.act_bits is not None:
            act_scheme = config.act_scheme or config.scheme
            options = config.scheme_options if act_scheme == config.scheme else {}
            self.act_quant = Quantizer(
                act_scheme,
                config.act_bits,
                kind="activation",
                signed=config.act_signed,
                **common,
                **options,
            )
        self.bias_quant = None
        if self.bias is not None:  # type: ignore[attr-defined]
            self.bias_quant = self._make_bias_quant()

    def _make_bias_quant(self) -> Quantizer | IntSEBias | None:
        config = self.config
        if config.bias_bits is None:
            return None
        if _uses_int_se_bias(config):
            candidates = config.scheme_options.get("candidates", 4)
            return IntSEBias(config.bias_bits, candidates)
        return Quantizer(config.bias_scheme, config.bias_bits, kind="weight")

    @property
    def batchnorm(self) -> _BatchNorm | None:
        """The batch norm attached by :meth:`attach_batchnorm` (not a submodule), or None."""
        return self.__dict__.get("_autoq_bn")

    def attach_batchnorm(self, bn: _BatchNorm) -> None:
        """Pair this layer with the ``bn`` that follows it, for learn-then-lock (IOIQ).

        Adds the persistent buffer ``bn_locked`` (False) and, for a layer without bias, a
        stateless bias quantizer for the folded bias. ``bn`` is referenced, not registered,
        so parameter names stay; hooks make it pass its input through once locked.
        Idempotent for the same ``bn``.
        """
        if self.batchnorm is bn:
            return
        if self.batchnorm is not None:
            raise ValueError("this layer is already paired with another BatchNorm")
        if bn.running_var is None:
            raise ValueError("the BatchNorm has no running statistics to fold")
        if bn.__dict__.get("_autoq_folded_into") is not None:
            raise ValueError("this BatchNorm is already paired with another layer")
        weight: Tensor = self.weight  # type: ignore[attr-defined]
        if self.channel_axis != 0 or weight.shape[0] != bn.num_features:
            raise ValueError(
                f"cannot fold {bn.num_features} BN channels into a weight of shape "
                f"{tuple(weight.shape)} with output channels on axis {self.channel_axis}"
            )
        self.register_buffer(  # type: ignore[attr-defined]
            "bn_locked", torch.tensor(False, device=weight.device)
        )
        if self.bias_quant is None:
            self.bias_quant = self._make_bias_quant()
        # Plain references (not submodules), so both state dicts keep their keys; the hooks
        # are module-level functions that find the layer through the BN, so deepcopy and
        # pickling keep each copy's BN tied to its own layer.
        self.__dict__["_autoq_bn"] = bn
        bn.__dict__["_autoq_folded_into"] = self
        bn.__dict__["_autoq_hooks"] = (
            bn.register_forward_pre_hook(_bn_pre_hook),
            bn.register_forward_hook(_bn_hook),
        )

    def detach_batchnorm(self) -> _BatchNorm | None:
        """Undo :meth:`attach_batchnorm`: the BN computes as a plain batch norm again.

        Removes its hooks and the pairing; this layer then computes with its unfolded weight
        (``bn_locked`` stays as a buffer, unused). Returns the BN, or None if none was attached.
        """
        bn = self.__dict__.pop("_autoq_bn", None)
        if bn is None:
            return None
        for handle in bn.__dict__.pop("_autoq_hooks", ()):
            handle.remove()
        bn.__dict__.pop("_autoq_folded_into", None)
        if bn.__dict__.pop("_autoq_was_training", False):
            bn.training = True
        return bn

    def is_bn_locked(self) -> bool:
        """Whether the attached batch norm is folded into this layer."""
        return self.batchnorm is not None and bool(self.bn_locked)

    def float_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """The float weight and bias the quantizers receive (BN-folded once locked)."""
        weight: Tensor = self.weight  # type: ignore[attr-defined]
        bias: Tensor | None = self.bias  # type: ignore[attr-defined]
        bn = self.batchnorm
        if bn is not None and bool(self.bn_locked):
            return fold_batchnorm(weight, bias, bn, self.channel_axis)
        return weight, bias

    @classmethod
    def from_float(cls, module: nn.Module, config: LayerConfig) -> QuantLayer:
        """The quantized twin of ``module``, sharing its parameter tensors."""
        if type(module) is not cls.float_class:
            raise TypeError(f"{cls.__name__}.from_float expects {cls.float_class.__name__}")
        layer = cls(**cls._constructor_args(module), device="meta")  # type: ignore[call-arg]
        layer.weight = module.weight
        layer.bias = module.bias
        layer._init_quantizers(config)
        layer.to(module.weight.device)
        layer.train(module.training)
        return layer

    def to_float(self) -> nn.Module:
        """The float layer with the same (unquantized) parameters; quantizer state is dropped.

        An attached batch norm is released (:meth:`detach_batchnorm`), so the float layer and
        its BN compute as the float original (BN statistics learned and applied again).
        """
        self.detach_batchnorm()
        module = self.float_class(**self._constructor_args(self), device="meta")  # type: ignore[arg-type]
        module.weight = self.weight  # type: ignore[attr-defined]
        module.bias = self.bias  # type: ignore[attr-defined]
        module.train(self.training)  # type: ignore[attr-defined]
        return module

    def quantized_weight(self) -> Tensor:
        """The fake-quantized (BN-folded once locked) weight as the forward pass uses it."""
        return self.weight_quant(self.float_weight_bias()[0])  # type: ignore[return-value]

    @property
    def layer_name(self) -> str:
        """The qualified name :func:`~lightning_autoq.convert.convert` gave it (else its type)."""
        return self.__dict__.get("_autoq_name", type(self).__name__)

    def _quantize_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        try:
            return self._quantize_all(x)
        except NonFiniteError as err:  # a first batch with NaN/Inf: say which layer saw it
            raise NonFiniteError(f"layer {self.layer_name!r}: {err}") from None

    def _quantize_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x = self.act_quant(x) if self.act_quant is not None else x
        weight, bias = self.float_weight_bias()
        if bias is not None and isinstance(self.bias_quant, IntSEBias):
            # One exponent search for the weight, shared by the weight and the bias window.
            qweight, s_w = quantize_weight(self.weight_quant, weight)
            s_in = input_exponent(self.act_quant)
            s_acc = None
            if s_w is not None and s_in is not None:
                s_acc = s_in + torch.round(s_w.detach()).reshape(-1)
            bias = self.bias_quant(bias, s_acc)
            return x, qweight, bias
        qweight = self.weight_quant(weight)  # type: ignore[assignment]
        if bias is not None and self.bias_quant is not None:
            bias = self.bias_quant(bias)
        return x, qweight, bias

    def accumulator_exponent(self, weight: Tensor | None = None) -> Tensor:
        """``s_in + s_w`` (INT-SE layers): one value, or one per output channel.

        ``s_in`` is the input quantizer's running exponent, ``s_w`` the weight quantizer's
        exponent for ``weight`` (default: the current float weight), both rounded; through an
        incremental wrapper (its fixed grid) or a search cell (its fixed or last-run candidate).
        """
        if weight is None:
            weight = self.float_weight_bias()[0]
        s_in = input_exponent(self.act_quant)
        s_w = weight_exponent(self.weight_quant, weight)
        if s_in is None or s_w is None:
            raise ValueError(
                "the accumulator exponent needs power-of-two (INT-SE) input and weight "
                "quantizers in use"
            )
        return s_in + torch.round(s_w).reshape(-1)


def _conv_args(module: nn.Module) -> dict[str, Any]:
    return {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": module.kernel_size,
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }


class _QuantConvNd(QuantLayer):
    @classmethod
    def _constructor_args(cls, module: nn.Module) -> dict[str, Any]:
        return _conv_args(module)

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = self._quantize_inputs(x)
        return self._conv_forward(x, weight, bias)  # type: ignore[attr-defined]


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    float_class = nn.Conv1d


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    float_class = nn.Conv2d


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    float_class = nn.Conv3d


class _QuantConvTransposeNd(QuantLayer):
    channel_axis = 1
    _functional: ClassVar[Any]
    _spatial_dims: ClassVar[int]

    @classmethod
    def _constructor_args(cls, module: nn.Module) -> dict[str, Any]:
        return {**_conv_args(module), "output_padding": module.output_padding}

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._output_padding(  # type: ignore[attr-defined]
            x,
            output_size,
            self.stride,  # type: ignore[attr-defined]
            self.padding,  # type: ignore[attr-defined]
            self.kernel_size,  # type: ignore[attr-defined]
            self._spatial_dims,
            self.dilation,  # type: ignore[attr-defined]
        )
        x, weight, bias = self._quantize_inputs(x)
        return type(self)._functional(
            x,
            weight,
            bias,
            self.stride,  # type: ignore[attr-defined]
            self.padding,  # type: ignore[attr-defined]
            output_padding,
            self.groups,  # type: ignore[attr-defined]
            self.dilation,  # type: ignore[attr-defined]
        )


class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    float_class = nn.ConvTranspose1d
    _functional = staticmethod(F.conv_transpose1d)
    _spatial_dims = 1


class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    float_class = nn.ConvTranspose2d
    _functional = staticmethod(F.conv_transpose2d)
    _spatial_dims = 2


class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    float_class = nn.ConvTranspose3d
    _functional = staticmethod(F.conv_transpose3d)
    _spatial_dims = 3


class QuantLinear(QuantLayer, nn.Linear):
    float_class = nn.Linear

    @classmethod
    def _constructor_args(cls, module: nn.Module) -> dict[str, Any]:
        return {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }

    def forward(self, x: Tensor) -> Tensor:
        x, weight, bias = self._quantize_inputs(x)
        return F.linear(x, weight, bias)


#: Float layer type -> quantized layer type; exact types only (a subclass may not call forward).
QUANT_LAYERS: dict[type[nn.Module], type[QuantLayer]] = {
    cls.float_class: cls
    for cls in (
        QuantConv1d,
        QuantConv2d,
        QuantConv3d,
        QuantConvTranspose1d,
        QuantConvTranspose2d,
        QuantConvTranspose3d,
        QuantLinear,
    )
}

__all__ = [
    "QUANT_LAYERS",
    "IntSEBias",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantLayer",
    "QuantLinear",
    "input_exponent",
    "quantize_weight",
    "weight_exponent",
]
