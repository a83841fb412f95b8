"""ONNX form of an integer program: integer operators only, checked against onnxruntime.

Each program operation becomes standard ONNX integer operators (opset 17):
``ConvInteger`` / ``MatMulInteger`` (uint8 codes, with a zero point of 128 for signed
8-bit codes, int8 weights, int32 accumulation), ``Mul`` by powers of two for left shifts,
``Add``, ``Max``/``Min`` for ReLU and clamps, ``ReduceSum`` for global average pooling,
strided ``Slice`` windows with ``Max`` (after a ``Pad``) or ``Add`` for max and windowed
average pooling, ``Mul`` by the integer multiplier of a dyadic requantization, and the
rounding right shift as an exact integer floor division with ties to even (``Div``, ``Mod``,
``Where`` on int64). Values keep the runtime's dtypes (int32, or int64 after a dyadic
rescale). The result equals :class:`~lightning_autoq.runtime.IntegerModel` bit for bit.
Needs the ``onnx`` package (``pip install lightning-autoq[onnx]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_autoq.export.lowering import ExportError
from lightning_autoq.runtime import IntegerModel
from lightning_autoq.runtime.atomic import write_atomic
from lightning_autoq.runtime.program import Node

OPSET = 17


#: torch integer dtype -> (numpy dtype, onnx.TensorProto element type)
_TYPES = {torch.int32: (np.int32, 6), torch.int64: (np.int64, 7)}


class _Builder:
    def __init__(self, model: IntegerModel, values: dict[str, Tensor]) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.model = model
        self.shapes = {name: tuple(v.shape) for name, v in values.items()}
        self.dtypes = {name: v.dtype for name, v in values.items()}
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def channel(self, values: list[int], rank: int, dtype: type, hint: str) -> str:
        shape = [1] * rank
        if len(values) > 1:
            shape[1] = len(values)
        return self.const(np.asarray(values, dtype=dtype).reshape(shape), hint)

    def np_type(self, value: str) -> type:
        """The numpy dtype of a program value (int32 or int64)."""
        if self.dtypes[value] not in _TYPES:
            raise ExportError(
                f"value {value!r} has dtype {self.dtypes[value]}; ONNX export: int32/64"
            )
        return _TYPES[self.dtypes[value]][0]

    def as_type(self, x: str, source: str, target: str) -> str:
        """``x`` (program value ``source``) cast to the dtype of program value ``target``."""
        if self.dtypes[source] == self.dtypes[target]:
            return x
        return self.op("Cast", [x], "widen", to=_TYPES[self.dtypes[target]][1])

    def extreme(self, op_type: str, x: str, bound: str, dtype: type, hint: str) -> str:
        """Element-wise ``Max``/``Min``; on int64 a ``Where`` of a comparison, because
        onnxruntime 1.31's int64 Max, Min and Clip misorder values in [2**31, 2**32)."""
        if dtype is not np.int64:
            return self.op(op_type, [x, bound], hint)
        compare = "Greater" if op_type == "Max" else "Less"
        return self.op("Where", [self.op(compare, [x, bound], hint + "_cmp"), x, bound], hint)

    def times_pow2(self, x: str, shifts: list[int], rank: int, hint: str, dtype: type) -> str:
        if not any(shifts):
            return x
        factors = [1 << s for s in shifts]
        return self.op("Mul", [x, self.channel(factors, rank, dtype, hint + "_pow2")], hint)

    def codes_uint8(self, x: str, x_range: list[int], hint: str) -> tuple[str, str | None]:
        lo, hi = x_range
        if lo >= 0 and hi <= 255:
            return self.op("Cast", [x], hint + "_u8", to=2), None  # 2 = UINT8
        if lo >= -128 and hi <= 127:
            shifted = self.op("Add", [x, self.const(np.array(128, np.int32), "zp")], hint)
            zero = self.const(np.array(128, np.uint8), hint + "_zp")
            return self.op("Cast", [shifted], hint + "_u8", to=2), zero
        raise ExportError(f"{hint}: ONNX export takes 8-bit layer inputs, got range {x_range}")

    def weight_int8(self, name: str, transpose: bool = False) -> str:
        weight = self.model.program.tensors[name]
        if weight.dtype != torch.int8:
            raise ExportError(f"weight {name!r} needs {weight.dtype}; ONNX export takes int8")
        return self.const((weight.t() if transpose else weight).contiguous().numpy(), name)

    def requant(self, x: str, node: Node, rank: int) -> str:
        a = node.attrs
        shifts = a["shift"]
        left = [max(-s, 0) for s in shifts]
        den = [a["divisor"] << max(s, 0) for s in shifts]
        num = self.op("Cast", [x], "num", to=7)
        num = self.times_pow2(num, left, rank, node.output, np.int64)
        return self.round_divide(num, den, node, rank)

    def requant_dyadic(self, x: str, node: Node, rank: int) -> str:
        a = node.attrs
        num = self.op("Cast", [x], "num", to=7)
        multiplier = self.channel(a["multiplier"], rank, np.int64, node.output + "_m")
        num = self.op("Mul", [num, multiplier], "scaled")
        return self.round_divide(num, [1 << s for s in a["shift"]], node, rank)

    def round_divide(self, num: str, den: list[int], node: Node, rank: int) -> str:
        """``clamp(round_half_even(num / den), lo, hi)`` on int64, cast to the node's dtype."""
        a = node.attrs
        den_c = self.channel(den, rank, np.int64, node.output + "_den")
        q = self.op("Div", [num, den_c], "q")  # truncates toward zero
        rest = self.op("Sub", [num, self.op("Mul", [q, den_c], "qd")], "rest")
        zero = self.const(np.array(0, np.int64), "zero")
        one = self.const(np.array(1, np.int64), "one")
        negative = self.op("Less", [rest, zero], "neg")
        q = self.op("Where", [negative, self.op("Sub", [q, one], "qm1"), q], "floor")
        rest = self.op("Where", [negative, self.op("Add", [rest, den_c], "r2"), rest], "rest2")
        twice = self.op("Mul", [rest, self.const(np.array(2, np.int64), "two")], "twice")
        above = self.op("Greater", [twice, den_c], "above")
        tie = self.op("Equal", [twice, den_c], "tie")
        odd = self.op("Equal", [self.op("Mod", [q, self.const(np.array(2, np.int64), "2")],
                                        "mod"), one], "odd")  # fmt: skip
        up = self.op("Or", [above, self.op("And", [tie, odd], "tieodd")], "up")
        q = self.op("Add", [q, self.op("Cast", [up], "upi", to=7)], "rounded")
        lo = self.const(np.array(a["lo"], np.int64), "lo")
        hi = self.const(np.array(a["hi"], np.int64), "hi")
        sat = self.extreme(
            "Min", self.extreme("Max", q, lo, np.int64, "sat_lo"), hi, np.int64, "sat"
        )
        return self.op("Cast", [sat], node.output, to=_TYPES[self.dtypes[node.output]][1])

    def windows(
        self, x: str, node: Node, kernel: list[int], stride: list[int], dilation: list[int]
    ) -> list[str]:
        """One strided ``Slice`` of ``x`` per kernel offset: each window's elements in turn."""
        out_size = self.shapes[node.output][2:]
        axes = self.const(np.arange(2, 2 + len(kernel), dtype=np.int64), "win_axes")
        steps = self.const(np.array(stride, np.int64), "win_steps")
        slices = []
        for offset in np.ndindex(*kernel):
            start = [o * d for o, d in zip(offset, dilation, strict=True)]
            stop = [b + s * (n - 1) + 1 for b, s, n in zip(start, stride, out_size, strict=True)]
            begin = self.const(np.array(start, np.int64), "win_begin")
            end = self.const(np.array(stop, np.int64), "win_end")
            slices.append(self.op("Slice", [x, begin, end, axes, steps], "window"))
        return slices

    def max_pool(self, x: str, node: Node) -> str:
        """Window maxima as the element-wise Max of strided slices (integer-exact)."""
        a = node.attrs
        dtype = self.np_type(node.inputs[0])
        if any(a["padding"]):
            begin = [0, 0, *a["padding"]]
            pads = self.const(np.array(begin + begin, np.int64), "mp_pads")
            low = self.const(np.array(np.iinfo(dtype).min, dtype), "mp_min")
            x = self.op("Pad", [x, pads, low], "mp_pad")
        windows = self.windows(x, node, a["kernel"], a["stride"], a["dilation"])
        out = windows[0]
        for window in windows[1:]:
            out = self.extreme("Max", out, window, dtype, "mp_max")
        return out

    def lower(self, node: Node, inputs: list[str]) -> str:
        a, op = node.attrs, node.op
        rank = len(self.shapes[node.output])
        x = inputs[0]
        if op in ("conv", "linear"):
            codes, zero = self.codes_uint8(x, a["input_range"], node.output)
            weight = self.weight_int8(a["weight"], transpose=op == "linear")
            if op == "linear":
                return self.op("MatMulInteger", [codes, weight, *([zero] if zero else [])], "mm")
            pads = list(a["padding"]) * 2
            return self.op(
                "ConvInteger",
                [codes, weight, *([zero] if zero else [])],
                node.output,
                pads=pads,
                strides=a["stride"],
                dilations=a["dilation"],
                group=a["groups"],
            )
        out_type = self.np_type(node.output)
        if op in ("add_const", "add", "shift_left", "clamp"):  # the runtime promotes to int64
            x = self.as_type(x, node.inputs[0], node.output)
        if op == "add_const":
            const = self.model.program.tensors[a["const"]].numpy()
            shaped = self.channel(const.tolist(), rank, out_type, node.output + "_c")
            shifted = self.times_pow2(x, a["shift"], rank, "shl", out_type)
            return self.op("Add", [shifted, shaped], "bias")
        if op == "add":
            left = self.times_pow2(x, a["shift_a"], rank, "shl_a", out_type)
            right = self.as_type(inputs[1], node.inputs[1], node.output)
            right = self.times_pow2(right, a["shift_b"], rank, "shl_b", out_type)
            return self.op("Add", [left, right], node.output)
        if op == "shift_left":
            return self.times_pow2(x, a["shift"], rank, node.output, out_type)
        if op == "relu":
            return self.extreme(
                "Max", x, self.const(np.array(0, out_type), "zero"), out_type, "relu"
            )
        if op == "clamp":
            lo = self.channel(a["lo"], rank, out_type, "lo")
            low = self.extreme("Max", x, lo, out_type, "clamp_lo")
            hi = self.channel(a["hi"], rank, out_type, "hi")
            return self.extreme("Min", low, hi, out_type, "clamp")
        if op == "requant":
            return self.requant(x, node, rank)
        if op == "requant_dyadic":
            return self.requant_dyadic(x, node, rank)
        if op == "max_pool":
            return self.max_pool(x, node)
        if op == "sum_pool":
            spatial = list(self.shapes[node.inputs[0]][2:])
            if list(a["kernel"]) == spatial and list(a["stride"]) == spatial:
                axes = self.const(np.arange(2, 2 + len(spatial), dtype=np.int64), "axes")
                return self.op("ReduceSum", [x, axes], node.output, keepdims=1)
            windows = self.windows(x, node, a["kernel"], a["stride"], [1] * len(spatial))
            total = windows[0]
            for window in windows[1:]:  # ONNX Sum takes floats only
                total = self.op("Add", [total, window], "window_sum")
            return total
        if op == "slice":
            ints = [np.array([a[k]], np.int64) for k in ("start", "stop", "dim", "step")]
            return self.op("Slice", [x, *[self.const(v, "sl") for v in ints]], node.output)
        if op == "pad":
            torch_pads = a["pads"]
            begin, end = [0] * rank, [0] * rank
            for i in range(len(torch_pads) // 2):
                begin[rank - 1 - i], end[rank - 1 - i] = torch_pads[2 * i], torch_pads[2 * i + 1]
            pads = self.const(np.array(begin + end, np.int64), "pads")
            zero = self.const(np.array(0, out_type), "pv")
            return self.op("Pad", [x, pads, zero], "pad")
        if op == "flatten":
            return self.op("Flatten", [x], node.output, axis=a["start_dim"])
        raise ExportError(f"operation {op!r} has no ONNX integer form in this exporter")


def to_onnx(model: IntegerModel, example_codes: Tensor) -> Any:
    """The ``onnx.ModelProto`` of ``model`` (int32 codes in, int32 logits out).

    ``example_codes`` (integer input codes) fix the ranks of the values; the batch size
    stays dynamic.

    Raises:
        ExportError: a layer input wider than 8 bits, or weights wider than int8.
    """
    from onnx import TensorProto, checker, helper

    values = model.run(example_codes, keep=True)
    builder = _Builder(model, values)
    shapes = builder.shapes
    program = model.program
    names = {program.input_name: program.input_name}
    for node in program.nodes:
        out = builder.lower(node, [names[i] for i in node.inputs])
        if out != node.output:
            out = builder.op("Identity", [out], node.output)
        names[node.output] = out
    in_shape = ["batch", *shapes[program.input_name][1:]]
    out_shape = ["batch", *shapes[program.output_name][1:]]
    graph = helper.make_graph(
        builder.nodes,
        "lightning_autoq_integer",
        [helper.make_tensor_value_info(program.input_name, TensorProto.INT32, in_shape)],
        [
            helper.make_tensor_value_info(
                names[program.output_name], _TYPES[values[program.output_name].dtype][1], out_shape
            )
        ],
        builder.initializers,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9
    )
    onnx_model.doc_string = f"output exponent {program.output_exponent}"
    checker.check_model(onnx_model)
    return onnx_model


def save_onnx(model: IntegerModel, example_codes: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_onnx` to ``path`` atomically."""
    return write_atomic(path, to_onnx(model, example_codes).SerializeToString())


__all__ = ["OPSET", "save_onnx", "to_onnx"]
