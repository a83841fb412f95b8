"""Quantizing schemes, one module per family; importing this package registers them all."""

from lightning_autoq.quant.schemes import (  # noqa: F401  (registration side effect)
    affine,
    apot,
    binary,
    dorefa,
    exponent,
    gaussian,
    lq_nets,
    lsq,
    lsq_plus,
    n2uq,
    pact,
    power_of_two,
)
from lightning_autoq.quant.schemes.base import (
    Params,
    Scheme,
    available_schemes,
    make_scheme,
    register_scheme,
    scheme_class,
)

#: The eight candidate schemes of AutoQNN, in the paper's order (B T Q F Z C P R).
AUTOQNN_SCHEMES: tuple[str, ...] = (
    "binary",
    "ternary",
    "ul2q",
    "fixed_point",
    "zoom",
    "clip",
    "power_of_two",
    "residual_binary",
)

__all__ = [
    "AUTOQNN_SCHEMES",
    "Params",
    "Scheme",
    "available_schemes",
    "make_scheme",
    "register_scheme",
    "scheme_class",
]
