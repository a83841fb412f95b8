"""lightning_autoq: automatic quantization (AutoQNN, IOIQ) for PyTorch Lightning."""

from lightning_autoq.convert import LayerConfig, QuantPolicy, convert, restore_float
from lightning_autoq.quant import AUTOQNN_SCHEMES, Quantizer, available_schemes

__version__ = "0.1.0"

__all__ = [
    "AUTOQNN_SCHEMES",
    "LayerConfig",
    "QuantPolicy",
    "Quantizer",
    "__version__",
    "available_schemes",
    "convert",
    "restore_float",
]
