"""Quantized layers: subclasses of the float layers that keep their parameter names.

A quantized layer holds three :class:`~lightning_autoq.quant.Quantizer` submodules,
``weight_quant``, ``act_quant`` (its input) and ``bias_quant``, built from a
:class:`~lightning_autoq.convert.policy.LayerConfig`. Because the float parameters keep their
names (``weight``, ``bias``), a float state dict loads into the quantized model and back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

from lightning_autoq.quant import Quantizer

if TYPE_CHECKING:
    from lightning_autoq.convert.policy import LayerConfig


class QuantLayer:
    """Mixin of every quantized layer: quantizers, conversion to and from the float layer."""

    float_class: ClassVar[type[nn.Module]]
    channel_axis: ClassVar[int] = 0  # output-channel axis of the weight
    config: LayerConfig
    weight_quant: Quantizer
    act_quant: Quantizer | None
    bias_quant: Quantizer | None

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
        )
        self.act_quant = None
        if config.act_bits is not None:
            self.act_quant = Quantizer(
                config.act_scheme or config.scheme,
                config.act_bits,
                kind="activation",
                signed=config.act_signed,
                **common,
            )
        self.bias_quant = None
        if config.bias_bits is not None and self.bias is not None:  # type: ignore[attr-defined]
            self.bias_quant = Quantizer(config.bias_scheme, config.bias_bits, kind="weight")

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
        """The float layer with the same (unquantized) parameters; quantizer state is dropped."""
        module = self.float_class(**self._constructor_args(self), device="meta")  # type: ignore[arg-type]
        module.weight = self.weight  # type: ignore[attr-defined]
        module.bias = self.bias  # type: ignore[attr-defined]
        module.train(self.training)  # type: ignore[attr-defined]
        return module

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight as the forward pass uses it."""
        return self.weight_quant(self.weight)  # type: ignore[attr-defined,return-value]

    def _quantize_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x = self.act_quant(x) if self.act_quant is not None else x
        bias = self.bias  # type: ignore[attr-defined]
        if self.bias_quant is not None:
            bias = self.bias_quant(bias)
        return x, self.quantized_weight(), bias


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
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantLayer",
    "QuantLinear",
]
