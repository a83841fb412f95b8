"""Lightning callbacks, one per concept."""

from lightning_autoq.callbacks.quantize import Quantize
from lightning_autoq.callbacks.scheme_search import SchemeSearch

__all__ = ["Quantize", "SchemeSearch"]
