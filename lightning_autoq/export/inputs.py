"""The check of the float batches export traces and compares with (once per export)."""

from __future__ import annotations

from torch import Tensor

from lightning_autoq.export.lowering import ExportError
from lightning_autoq.quant.finite import NonFiniteError, check_finite


def check_example_input(x: object, what: str = "example_input") -> Tensor:
    """``x`` if it is a non-empty floating-point batch of finite values.

    Raises:
        ExportError: naming what is wrong (a NaN/Inf batch would trace nothing useful and make
            the exactness check compare NaN with NaN).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1 or not x.numel():
        shown = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else x
        raise ExportError(
            f"{what}={shown!r} is not allowed; allowed: a non-empty float batch (N, ...)"
        )
    try:
        check_finite(x, what)
    except NonFiniteError as err:
        raise ExportError(str(err)) from None
    return x


__all__ = ["check_example_input"]
