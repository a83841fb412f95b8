"""Quantizer core: functional primitives, registered schemes and the quantizer module."""

from lightning_autoq.quant.quantizer import Quantizer
from lightning_autoq.quant.schemes import (
    AUTOQNN_SCHEMES,
    Scheme,
    available_schemes,
    make_scheme,
    register_scheme,
    scheme_class,
)

__all__ = [
    "AUTOQNN_SCHEMES",
    "Quantizer",
    "Scheme",
    "available_schemes",
    "make_scheme",
    "register_scheme",
    "scheme_class",
]
