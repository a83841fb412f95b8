"""Quantized counterparts of the float layers."""

from lightning_autoq.nn.layers import (
    QUANT_LAYERS,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
    QuantLayer,
    QuantLinear,
)

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
