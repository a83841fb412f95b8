"""QAG: automatic conversion of float models, driven by a plain-data policy."""

from lightning_autoq.convert.convert import (
    convert,
    layer_configs,
    quantizable_layers,
    quantized_layers,
    restore_float,
)
from lightning_autoq.convert.policy import LayerConfig, QuantPolicy
from lightning_autoq.convert.report import format_table, layer_table, weight_size_bits

__all__ = [
    "LayerConfig",
    "QuantPolicy",
    "convert",
    "format_table",
    "layer_configs",
    "layer_table",
    "quantizable_layers",
    "quantized_layers",
    "restore_float",
    "weight_size_bits",
]
