"""Argument checks shared across the package (data modules, callbacks)."""

from __future__ import annotations


def check_count(name: str, value: object, minimum: int, more: str = "") -> int:
    """``value`` if it is an integer >= ``minimum``; a ValueError naming it otherwise.

    ``more`` extends the allowed values in the message (e.g. ``"or None (all images)"``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (f" {more}" if more else "")
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
    return value


__all__ = ["check_count"]
