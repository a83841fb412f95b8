"""The one check for NaN and infinity: setup-time and first-batch only, never per step."""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or infinite values."""


def non_finite_counts(x: Tensor) -> tuple[int, int]:
    """``(NaN count, infinity count)`` of ``x``."""
    return int(torch.isnan(x).sum()), int(torch.isinf(x).sum())


def check_finite(x: Tensor, what: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` naming ``what`` if ``x`` holds NaN or infinity.

    One reduction and one device sync; the counts are computed only on failure.
    """
    if not x.is_floating_point() or bool(torch.isfinite(x).all()):
        return
    nan, inf = non_finite_counts(x)
    raise NonFiniteError(
        f"{what} holds {nan} NaN and {inf} Inf of {x.numel()} values; allowed: finite values"
        + (f" ({hint})" if hint else "")
    )


__all__ = ["NonFiniteError", "check_finite", "non_finite_counts"]
