"""Lightning callbacks, one per concept."""

from lightning_autoq.callbacks.quantize import Quantize

__all__ = ["Quantize"]
