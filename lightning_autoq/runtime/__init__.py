"""The integer-only runtime: loads an exported model and runs it with torch integer ops.

Needs neither Lightning nor pickle: the file is safetensors plus a JSON graph.

Example:
    >>> from lightning_autoq.runtime import IntegerModel, load
    >>> model = IntegerModel(load("model.int.safetensors"))  # doctest: +SKIP
    >>> logits = model(model.quantize_input(images))  # doctest: +SKIP
"""

from lightning_autoq.runtime.evaluate import count_correct
from lightning_autoq.runtime.executor import IntegerModel
from lightning_autoq.runtime.format import load, packed_size_bytes, save
from lightning_autoq.runtime.program import IntegerProgram, Node

__all__ = [
    "IntegerModel",
    "IntegerProgram",
    "Node",
    "count_correct",
    "load",
    "packed_size_bytes",
    "save",
]
