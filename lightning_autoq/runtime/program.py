"""The integer program: a list of integer operations over named tensors (plain data).

An :class:`IntegerProgram` is what :func:`lightning_autoq.export.export_integer` produces,
what :mod:`lightning_autoq.runtime.format` writes (safetensors + a JSON graph) and what
:class:`lightning_autoq.runtime.IntegerModel` runs. Every value is an integer tensor; a value
``v`` stands for the real number ``v * 2**e`` with a per-channel exponent ``e`` that only the
exporter tracks. The operations and their attributes:

====================  ==========================================================================
``conv``              int32 accumulation of ``weight`` (int codes) over the input codes;
                      ``stride``, ``padding``, ``dilation``, ``groups``; ``input_range``.
``linear``            ``x @ weight.T`` in int32; ``input_range``.
``add_const``         ``(x << shift) + const`` (``shift`` per channel, ``const`` a tensor).
``add``               ``(a << shift_a) + (b << shift_b)`` (residual adds, aligned exponents).
``shift_left``        ``x << shift`` (per channel).
``relu``, ``clamp``   ``max(x, 0)``; ``min(max(x, lo), hi)`` with per-channel bounds.
``requant``           ``clamp(round_half_even(x / (divisor * 2**shift)), lo, hi)``; a negative
                      shift is a left shift. The rounding right shift of IOIQ's truncation.
``requant_dyadic``    ``clamp(round_half_even(x * multiplier / 2**shift), lo, hi)`` in int64
                      with per-channel ``multiplier`` and ``shift >= 0``: a dyadic rescale
                      for scales that are not powers of two (HAWQ-V3).
``sum_pool``          sums over ``kernel`` windows with ``stride`` (average pooling; its
                      division is folded into the next ``requant``'s ``divisor``).
``max_pool``          ``kernel``, ``stride``, ``padding``, ``dilation``.
``slice``             ``dim``, ``start``, ``stop``, ``step``.
``pad``               zero padding, ``pads`` as in ``torch.nn.functional.pad``.
``flatten``           ``start_dim``.
====================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

#: Operation name -> (number of value inputs, required attributes, tensor attributes).
OPS: dict[str, tuple[int, frozenset[str], frozenset[str]]] = {
    "conv": (
        1,
        frozenset({"stride", "padding", "dilation", "groups", "input_range", "weight"}),
        frozenset({"weight"}),
    ),
    "linear": (1, frozenset({"input_range", "weight"}), frozenset({"weight"})),
    "add_const": (1, frozenset({"shift", "const"}), frozenset({"const"})),
    "add": (2, frozenset({"shift_a", "shift_b"}), frozenset()),
    "shift_left": (1, frozenset({"shift"}), frozenset()),
    "relu": (1, frozenset(), frozenset()),
    "clamp": (1, frozenset({"lo", "hi"}), frozenset()),
    "requant": (1, frozenset({"shift", "divisor", "lo", "hi"}), frozenset()),
    "requant_dyadic": (1, frozenset({"multiplier", "shift", "lo", "hi"}), frozenset()),
    "sum_pool": (1, frozenset({"kernel", "stride"}), frozenset()),
    "max_pool": (1, frozenset({"kernel", "stride", "padding", "dilation"}), frozenset()),
    "slice": (1, frozenset({"dim", "start", "stop", "step"}), frozenset()),
    "pad": (1, frozenset({"pads"}), frozenset()),
    "flatten": (1, frozenset({"start_dim"}), frozenset()),
}

#: Version of the graph format written by :mod:`lightning_autoq.runtime.format`.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Node:
    """One operation: ``output = op(*inputs, **attrs)``; tensor attributes name tensors."""

    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "inputs": list(self.inputs), "output": self.output, **self.attrs}


@dataclass
class IntegerProgram:
    """An integer-only model as data.

    Args:
        nodes: operations in execution order.
        tensors: constant integer tensors (weight codes, biases) by name.
        input_name: the value holding the input codes.
        input_range: ``[lo, hi]`` of the input codes.
        input_exponent: the input codes are ``round(x / step)`` of the float input, with
            ``step = input_multiplier * 2**input_exponent`` (a float32 value).
        output_name: the value holding the output (logit) integers.
        output_exponent: the output stands for ``output * 2**output_exponent``.
        weight_bits: code width of each weight tensor (for packing), by tensor name.
        report: per-layer facts for people (bits, accumulator bits), not used to run.
        input_multiplier: the odd integer mantissa of the input step (1 for a power of two).
    """

    nodes: list[Node]
    tensors: dict[str, Tensor]
    input_name: str
    input_range: tuple[int, int]
    input_exponent: int
    output_name: str
    output_exponent: int
    weight_bits: dict[str, int] = field(default_factory=dict)
    report: list[dict[str, Any]] = field(default_factory=list)
    input_multiplier: int = 1

    def validate(self) -> None:
        """Check names, operations and attributes; raise ValueError naming the first problem."""
        defined = {self.input_name}
        for i, node in enumerate(self.nodes):
            if node.op not in OPS:
                raise ValueError(
                    f"node {i} has unknown op {node.op!r}; allowed: {', '.join(sorted(OPS))}"
                )
            arity, required, tensor_attrs = OPS[node.op]
            if len(node.inputs) != arity:
                raise ValueError(f"node {i} ({node.op}) takes {arity} inputs, got {node.inputs}")
            missing = required - set(node.attrs)
            extra = set(node.attrs) - required
            if missing or extra:
                raise ValueError(
                    f"node {i} ({node.op}) attributes: missing {sorted(missing)}, "
                    f"unknown {sorted(extra)}; allowed: {sorted(required)}"
                )
            for name in node.inputs:
                if name not in defined:
                    raise ValueError(f"node {i} ({node.op}) reads {name!r} before it is defined")
            for attr in tensor_attrs:
                if node.attrs[attr] not in self.tensors:
                    raise ValueError(
                        f"node {i} ({node.op}) names tensor {node.attrs[attr]!r}, "
                        "which the file does not hold"
                    )
            for attr, value in node.attrs.items():
                if attr not in tensor_attrs and not _is_int_data(value):
                    raise ValueError(
                        f"node {i} ({node.op}) attribute {attr!r}={value!r} is not integer data"
                    )
            defined.add(node.output)
        if self.output_name not in defined:
            raise ValueError(f"the output {self.output_name!r} is never computed")
        for name, tensor in self.tensors.items():
            if tensor.is_floating_point() or tensor.is_complex():
                raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; integer dtypes only")


def _is_int_data(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, list) and all(_is_int_data(v) for v in value)


__all__ = ["FORMAT_VERSION", "OPS", "IntegerProgram", "Node"]
