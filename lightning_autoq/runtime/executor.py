"""Runs an :class:`~lightning_autoq.runtime.program.IntegerProgram` with integer ops only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_autoq.quant.finite import check_finite
from lightning_autoq.runtime import ops
from lightning_autoq.runtime.program import IntegerProgram, Node

Kernel = Callable[[list[Tensor]], Tensor]


class IntegerModel:
    """An integer-only model: integer codes in, integer logits out.

    The input is the first layer's codes, ``round(x / step)`` clamped to
    ``input_range`` (:meth:`quantize_input` computes them from a float tensor, the one float
    step, done where the data is prepared); the output ``y`` stands for
    ``y * 2**output_exponent``. No operation inside :meth:`__call__` uses a float dtype.

    Args:
        program: the validated program (from the exporter or :func:`~.format.load`).

    Example:
        >>> model = IntegerModel(program)  # doctest: +SKIP
        >>> logits = model(model.quantize_input(images))  # doctest: +SKIP
    """

    def __init__(self, program: IntegerProgram) -> None:
        program.validate()
        self.program = program
        self._kernels: list[tuple[Node, Kernel]] = [(n, self._compile(n)) for n in program.nodes]

    @property
    def input_exponent(self) -> int:
        return self.program.input_exponent

    @property
    def output_exponent(self) -> int:
        return self.program.output_exponent

    def quantize_input(self, x: Tensor) -> Tensor:
        """The input codes of a float tensor (data preparation, outside the integer model).

        Raises:
            ValueError: ``x`` holds NaN or infinity (it has no code).
        """
        check_finite(x, "the input")
        lo, hi = self.program.input_range
        if self.program.input_multiplier == 1:
            codes = torch.round(x.double() * 2.0 ** (-self.program.input_exponent))
        else:  # a float32 step: divide in float32, as the fake-quantized model does
            step = self.program.input_multiplier * 2.0**self.program.input_exponent
            codes = torch.round(x.float() / torch.tensor(step, dtype=torch.float32))
        return torch.clamp(codes, lo, hi).to(torch.int32)

    def predict(self, x: Tensor) -> Tensor:
        """The integer logits of a float batch: :meth:`quantize_input`, then the model."""
        return self(self.quantize_input(x))

    def __call__(self, codes: Tensor) -> Tensor:
        return self.run(codes)[self.program.output_name]

    def run(self, codes: Tensor, keep: bool = False) -> dict[str, Tensor]:
        """Every value by name (``keep=True``) or only the output."""
        if codes.is_floating_point():
            raise TypeError(f"the integer model takes integer codes, got {codes.dtype}")
        lo, hi = self.program.input_range
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise ValueError(f"input codes outside the input range [{lo}, {hi}]")
        values = {self.program.input_name: codes.to(torch.int32)}
        for node, kernel in self._kernels:
            values[node.output] = kernel([values[name] for name in node.inputs])
        if keep:
            return values
        return {self.program.output_name: values[self.program.output_name]}

    @staticmethod
    def _channel(values: list[int]) -> Callable[[int], Tensor]:
        vector = torch.tensor(values, dtype=torch.int64)
        if ops.INT32[0] <= int(vector.min()) and int(vector.max()) <= ops.INT32[1]:
            vector = vector.to(torch.int32)  # int32 values stay int32 (bounds proven)
        return lambda dims: ops.channel_view(vector, dims)

    def _compile(self, node: Node) -> Kernel:
        a: dict[str, Any] = node.attrs
        tensors = self.program.tensors
        op = node.op
        if op in ("conv", "linear"):
            weight = tensors[a["weight"]]
            w_t = weight.reshape(weight.shape[0], -1).t().contiguous()
            w_sum = w_t.to(torch.int32).sum(dim=0, dtype=torch.int32)
            x_range = (int(a["input_range"][0]), int(a["input_range"][1]))
            if op == "linear":
                return lambda v: ops.linear(v[0], w_t, x_range, w_sum)
            conv_args = (a["stride"], a["padding"], a["dilation"], int(a["groups"]), x_range)
            return lambda v: ops.conv(v[0], weight, w_t, w_sum, *conv_args)
        if op == "add_const":
            shift, const = self._channel(a["shift"]), tensors[a["const"]]
            return lambda v: (
                ops.shift_left(v[0], shift(v[0].dim())) + ops.channel_view(const, v[0].dim())
            )
        if op == "add":
            sa, sb = self._channel(a["shift_a"]), self._channel(a["shift_b"])
            return lambda v: (
                ops.shift_left(v[0], sa(v[0].dim())) + ops.shift_left(v[1], sb(v[1].dim()))
            )
        if op == "shift_left":
            shift = self._channel(a["shift"])
            return lambda v: ops.shift_left(v[0], shift(v[0].dim()))
        if op == "relu":
            return lambda v: torch.clamp(v[0], min=0)
        if op == "clamp":
            lo, hi = self._channel(a["lo"]), self._channel(a["hi"])
            return lambda v: torch.minimum(torch.maximum(v[0], lo(v[0].dim())), hi(v[0].dim()))
        if op == "requant":
            shift = self._channel(a["shift"])
            divisor, lo, hi = int(a["divisor"]), int(a["lo"]), int(a["hi"])
            return lambda v: ops.requant(v[0], shift(v[0].dim()), divisor, lo, hi)
        if op == "requant_dyadic":
            multiplier = torch.tensor(a["multiplier"], dtype=torch.int64)
            right = torch.tensor(a["shift"], dtype=torch.int64)
            lo, hi = int(a["lo"]), int(a["hi"])
            return lambda v: ops.requant_dyadic(
                v[0],
                ops.channel_view(multiplier, v[0].dim()),
                ops.channel_view(right, v[0].dim()),
                lo,
                hi,
            )
        if op == "sum_pool":
            return lambda v: ops.sum_pool(v[0], a["kernel"], a["stride"])
        if op == "max_pool":
            args = (a["kernel"], a["stride"], a["padding"], a["dilation"])
            return lambda v: ops.max_pool(v[0], *args)
        if op == "slice":
            dim, start, stop, step = a["dim"], a["start"], a["stop"], a["step"]
            index = (slice(None),) * dim + (slice(start, stop, step),)
            return lambda v: v[0][index]
        if op == "pad":
            return lambda v: F.pad(v[0], a["pads"])
        if op == "flatten":
            return lambda v: torch.flatten(v[0], int(a["start_dim"]))
        raise ValueError(f"unknown op {op!r}")  # validate() makes this unreachable


__all__ = ["IntegerModel"]
