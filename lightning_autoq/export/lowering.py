"""Lowering a fake-quantized model (traced with ``torch.fx``) to an integer program.

Every value of the program is an integer tensor standing for ``v * 2**e / divisor`` with a
per-channel exponent ``e`` (channels on dimension 1) that this module tracks, so products,
bias adds, residual adds and ReLUs are exact integer operations, and each quantized layer's
input is the IOIQ truncation ``sat(round_shift(v, s_in - e))`` (Yang et al. 2023; dyadic
arithmetic as in HAWQ-V3, https://arxiv.org/abs/2011.10680). Because the scales are powers
of two, the fake-quantized model computes the same numbers in float32, which is what makes
the export bit-exact. A layer whose scales are not powers of two (LSQ, PACT, clip...) is
refused, unless the lowering is built with ``dyadic=True``: then its accumulator is
rescaled onto a fine power-of-two grid (int64; the bias is rounded onto that grid), and the
next input is requantized, by integer multipliers and right shifts (``requant_dyadic``). Such a
program agrees with the float simulation except where a rounding falls within float32
error of a tie, so it is compared, not proven equal.

The lowering also bounds every value in the worst case over the input range (interval
arithmetic on the integer codes), so it can prove that no int32 accumulator overflows.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_autoq.export.fold import _LeafTracer
from lightning_autoq.nn import QuantLayer
from lightning_autoq.nn.layers import IntSEBias
from lightning_autoq.quant.schemes.base import UniformScheme
from lightning_autoq.runtime.program import IntegerProgram, Node

#: Schemes whose scales are powers of two (the ones an integer-only export can take).
POWER_OF_TWO_SCHEMES = ("int_se", "fixed_point")
#: Largest accumulator width the runtime uses.
ACCUMULATOR_BITS = 32
_MAX_WEIGHT_CODE = 2**15
#: Width of the int64 values after a dyadic rescale (one bit short, for rounding).
WIDE_BITS = 62
#: A dyadic layer's output grid: its worst-case output is ``2**FINE_BITS`` grid steps, which
#: leaves ``WIDE_BITS - FINE_BITS`` bits for the residual adds and pooling after it.
FINE_BITS = 36
#: Bits of a dyadic multiplier's mantissa.
_MULTIPLIER_BITS = 30
_INT64 = (-(2**62), 2**62)
#: What ``scales="dyadic"`` adds (activations: unsigned clip only; signed clip is mid-rise).
DYADIC_SCHEMES = "lsq, clip"
_DYADIC_HINT = f"; or export with dyadic requantization (scales='dyadic'): {DYADIC_SCHEMES}"


class ExportError(ValueError):
    """The model cannot be exported as an integer-only program (the message says why)."""


#: fx call_function targets -> the operation they are lowered as.
_FUNCTION_KINDS: dict[Any, str] = {
    operator.add: "add",
    torch.add: "add",
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.hardtanh: "hardtanh",
    torch.flatten: "flatten",
    F.adaptive_avg_pool1d: "adaptive_avg_pool",
    F.adaptive_avg_pool2d: "adaptive_avg_pool",
    F.max_pool2d: "max_pool",
    F.avg_pool2d: "avg_pool",
    operator.getitem: "getitem",
    F.pad: "pad",
}


@dataclass
class _Value:
    """A program value: integer tensor ``name`` for ``v * 2**exponent / divisor``."""

    name: str
    exponent: Tensor  # int64, one per channel (dimension 1)
    bound: Tensor  # float64, worst-case |v| per channel
    divisor: int = 1
    wide: bool = False  # int64 (the output of a dyadic rescale and what follows it)

    @property
    def limit_bits(self) -> int:
        return WIDE_BITS if self.wide else ACCUMULATOR_BITS


def _pow2_split(values: Tensor, channel_axis: int = 0) -> tuple[Tensor, Tensor]:
    """``values = codes * 2**e`` with the largest per-channel ``e`` that keeps codes integral.

    Returns ``(codes int64, e int64 per channel)``; a channel of zeros gets ``e = 0``.
    """
    v = values.detach().double().movedim(channel_axis, 0).reshape(values.shape[channel_axis], -1)
    mantissa, exp = torch.frexp(v)
    bits = torch.round(mantissa * 2.0**53).to(torch.int64)
    low = bits & -bits  # lowest set bit of the 53-bit mantissa
    trailing = torch.where(bits != 0, torch.log2(low.double().abs()), torch.full_like(v, 1e9))
    lowest = torch.where(bits != 0, exp.double() - 53 + trailing, torch.full_like(v, 1e9))
    e = lowest.min(dim=1).values
    e = torch.where(e > 1e8, torch.zeros_like(e), e).to(torch.int64)
    codes = torch.round(v * torch.exp2(-e.double()).unsqueeze(1)).to(torch.int64)
    codes = codes.reshape(values.movedim(channel_axis, 0).shape).movedim(0, channel_axis)
    return codes.contiguous(), e


def _exact_log2(step: float) -> int | None:
    """``log2(step)`` when ``step`` is a power of two, else None."""
    mantissa, exponent = math.frexp(step)
    return exponent - 1 if mantissa == 0.5 else None


def _odd_parts(step: float) -> tuple[int, int]:
    """``(m, e)`` with ``step = m * 2**e`` exactly and ``m`` an odd integer (``step > 0``)."""
    mantissa, exponent = math.frexp(step)
    m, e = int(mantissa * 2.0**53), exponent - 53
    while m % 2 == 0:
        m, e = m // 2, e + 1
    return m, e


def _signed_bits(codes: Tensor) -> int:
    """The smallest two's-complement width holding every code (at least 2)."""
    if not codes.numel():
        return 2
    lo, hi = int(codes.min()), int(codes.max())
    bits = 2
    while lo < -(2 ** (bits - 1)) or hi > 2 ** (bits - 1) - 1:
        bits += 1
    return bits


def _bits_of(bound: Tensor) -> int:
    """Two's-complement width holding every integer of magnitude up to ``bound``."""
    top = float(bound.max()) if bound.numel() else 0.0
    return math.ceil(math.log2(top + 1)) + 1


class Lowering:
    """Builds an :class:`IntegerProgram` from a BN-locked, fake-quantized model in eval mode.

    Takes a :func:`~lightning_autoq.export.integer.lock_for_export` copy, which has checked
    that every input quantizer has seen data (tracing shapes runs the model once).
    """

    def __init__(self, model: nn.Module, example_input: Tensor, dyadic: bool = False) -> None:
        self.model = model
        self.dyadic = dyadic
        try:
            graph = _LeafTracer().trace(model)
        except Exception as err:  # fx raises many types for untraceable code
            raise ExportError(
                f"cannot trace {type(model).__name__} with torch.fx for export "
                f"({type(err).__name__}: {err}); export a traceable submodule or remove "
                "data-dependent control flow from its forward"
            ) from err
        self.gm = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(self.gm).propagate(example_input)
        self.nodes: list[Node] = []
        self.tensors: dict[str, Tensor] = {}
        self.weight_bits: dict[str, int] = {}
        self.report: list[dict[str, Any]] = []
        self.values: dict[str, _Value | None] = {}  # fx node name -> value (None: float input)
        self.input_codes: tuple[str, float, int, int] | None = None  # name, step, lo, hi
        self._requants: dict[tuple[Any, ...], str] = {}

    # ----------------------------------------------------------------- helpers
    def _emit(self, op: str, inputs: tuple[str, ...], output: str, **attrs: Any) -> str:
        self.nodes.append(Node(op, inputs, output, attrs))
        return output

    def _check_bound(self, value: _Value, where: str) -> _Value:
        bits = _bits_of(value.bound)
        if bits > value.limit_bits:
            raise ExportError(
                f"{where}: the worst-case value needs {bits} bits, more than the "
                f"{value.limit_bits}-bit accumulator; lower the bit-widths or the fan-in"
            )
        return value

    def _shape(self, node: fx.Node) -> torch.Size:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise ExportError(f"node {node.name!r} does not produce a tensor")
        return meta.shape

    def _value(self, arg: Any, user: fx.Node) -> _Value:
        if not isinstance(arg, fx.Node) or arg.name not in self.values:
            raise ExportError(f"{user.name!r} ({user.target}): input {arg!r} is not a tensor")
        value = self.values[arg.name]
        if value is None:
            raise ExportError(
                f"{user.name!r} ({user.target}) uses the float model input directly; in an "
                "integer-only model the input must go straight into quantized layers"
            )
        return value

    # ----------------------------------------------------------------- driver
    def run(self) -> IntegerProgram:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ExportError(f"export needs one input tensor, the model takes {len(placeholders)}")
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.values[node.name] = None
            elif node.op == "output":
                return self._output(node)
            elif node.meta.get("tensor_meta") is None and node.op == "call_method":
                continue  # shape queries such as x.size(0); their users read shapes from meta
            elif node.op == "call_module":
                self.values[node.name] = self._module(node, self.gm.get_submodule(node.target))
            elif node.op in ("call_function", "call_method"):
                self.values[node.name] = self._function(node)
            else:
                raise ExportError(f"unsupported graph node {node.name!r} ({node.op} {node.target})")
        raise ExportError("the traced graph has no output")

    def _output(self, node: fx.Node) -> IntegerProgram:
        value = self._value(node.args[0], node)
        if value.divisor != 1:
            raise ExportError("the model output is an average; end the model with a layer")
        out_e = int(value.exponent.min())
        name = value.name
        if bool((value.exponent != out_e).any()):
            name = self._emit(
                "shift_left",
                (name,),
                name + ".aligned",
                shift=(value.exponent - out_e).tolist(),
            )
            aligned = value.bound * torch.exp2((value.exponent - out_e).double())
            self._check_bound(_Value(name, value.exponent, aligned, wide=value.wide), "the output")
        if self.input_codes is None:
            raise ExportError("no quantized layer reads the model input")
        input_name, input_step, lo, hi = self.input_codes
        multiplier, input_e = _odd_parts(input_step)
        return IntegerProgram(
            nodes=self.nodes,
            tensors=self.tensors,
            input_name=input_name,
            input_range=(lo, hi),
            input_exponent=input_e,
            output_name=name,
            output_exponent=out_e,
            weight_bits=self.weight_bits,
            report=self.report,
            input_multiplier=multiplier,
        )

    # ----------------------------------------------------------------- modules
    def _module(self, node: fx.Node, module: nn.Module) -> _Value:
        if isinstance(module, QuantLayer):
            return self._layer(node, module)
        if isinstance(module, _BatchNorm):
            owner = module.__dict__.get("_autoq_folded_into")
            if owner is not None and owner.is_bn_locked():
                return self._value(node.args[0], node)
            raise ExportError(
                f"BatchNorm {node.target!r} is not folded into a quantized layer; "
                "export folds a BN that directly follows one quantized conv/linear"
            )
        if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
            return self._value(node.args[0], node)
        if isinstance(module, nn.ReLU):
            return self._relu(node)
        if isinstance(module, nn.ReLU6):
            return self._clamp(node, 0.0, 6.0)
        if isinstance(module, nn.Hardtanh):
            return self._clamp(node, module.min_val, module.max_val)
        if isinstance(module, nn.Flatten):
            if module.end_dim != -1:
                raise ExportError(f"{node.target!r}: only Flatten(end_dim=-1) is supported")
            return self._flatten(node, module.start_dim)
        if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            return self._adaptive_pool(node)
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
            if any(p != 0 for p in _pair_list(module.padding, 1)) or module.ceil_mode:
                raise ExportError(f"{node.target!r}: average pooling with padding/ceil_mode")
            return self._pool(node, module.kernel_size, module.stride)
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
            if module.ceil_mode or module.return_indices:
                raise ExportError(f"{node.target!r}: max pooling with ceil_mode/return_indices")
            return self._max_pool(
                node, module.kernel_size, module.stride, module.padding, module.dilation
            )
        raise ExportError(
            f"module {node.target!r} ({type(module).__name__}) has no integer form; supported: "
            "quantized Conv1d/Conv2d/Linear, folded BatchNorm, ReLU, ReLU6, Hardtanh, Identity, "
            "Dropout, Flatten, AvgPool, AdaptiveAvgPool, MaxPool, residual add, slicing, "
            "zero padding"
        )

    def _functional_kind(self, node: fx.Node) -> str:
        target = node.target
        if node.op == "call_method":
            return str(target)
        return _FUNCTION_KINDS.get(target, getattr(target, "__name__", str(target)))  # type: ignore[arg-type]

    def _function(self, node: fx.Node) -> _Value:
        kind = self._functional_kind(node)
        args, kwargs = node.args, node.kwargs
        if kind in ("add", "__add__", "add_"):
            return self._add(node)
        if kind in ("relu", "relu_"):
            return self._relu(node)
        if kind == "relu6":
            return self._clamp(node, 0.0, 6.0)
        if kind == "hardtanh":
            return self._clamp(node, kwargs.get("min_val", -1.0), kwargs.get("max_val", 1.0))
        if kind == "flatten":
            return self._flatten(node, args[1] if len(args) > 1 else kwargs.get("start_dim", 0))
        if kind in ("view", "reshape"):
            shape_in, shape_out = self._shape(args[0]), self._shape(node)  # type: ignore[arg-type]
            if len(shape_out) == 2 and shape_out[0] == shape_in[0]:
                return self._flatten(node, 1)
            raise ExportError(f"{node.name!r}: only flattening view/reshape is supported")
        if kind == "adaptive_avg_pool":
            return self._adaptive_pool(node)
        if kind == "mean":
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            shape = self._shape(args[0])  # type: ignore[arg-type]
            if sorted(int(d) % len(shape) for d in dims) != list(range(2, len(shape))):  # type: ignore[union-attr]
                raise ExportError(f"{node.name!r}: only a mean over all spatial dimensions")
            return self._pool(node, tuple(shape[2:]), tuple(shape[2:]), keep=False)
        if kind == "avg_pool":
            kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
            stride = args[2] if len(args) > 2 else kwargs.get("stride")
            return self._pool(node, kernel, stride or kernel)
        if kind == "getitem":
            return self._getitem(node)
        if kind == "pad":
            return self._pad(node)
        raise ExportError(
            f"operation {node.name!r} ({kind}) has no integer form; supported functions: add, "
            "relu, relu6, hardtanh, flatten, view/reshape to 2-D, mean over spatial dims, "
            "adaptive_avg_pool, avg_pool2d, getitem slicing, pad with zeros"
        )

    # ----------------------------------------------------------------- quantized layers
    def _layer(self, node: fx.Node, layer: QuantLayer) -> _Value:
        name = str(node.target)
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)) or isinstance(layer, nn.Conv3d):
            raise ExportError(
                f"layer {name!r} ({type(layer).__name__}) has no integer kernel; supported: "
                "quantized Conv1d, Conv2d, Linear"
            )
        if isinstance(layer, nn.Conv2d | nn.Conv1d) and layer.padding_mode != "zeros":
            raise ExportError(
                f"layer {name!r}: padding_mode={layer.padding_mode!r}; allowed: zeros"
            )
        act = layer.act_quant
        if act is None:
            raise ExportError(
                f"layer {name!r} has a float input (act_bits: null); an integer-only model "
                "needs every quantized layer's input quantized"
            )
        x_in = node.args[0]
        codes, s_in, lo, hi = self._input_codes(node, name, act, x_in)
        with torch.no_grad():
            weight, bias = layer.float_weight_bias()
            qweight = _weight_of(layer, name, weight)
            qbias = self._quantized_bias(layer, weight, bias)
        w_codes, e_w = _pow2_split(qweight, 0)
        w_step = torch.exp2(e_w.double())
        if int(w_codes.abs().max()) >= _MAX_WEIGHT_CODE:
            scheme = layer.config.scheme
            if not self.dyadic:
                raise ExportError(
                    f"layer {name!r}: its weights (scheme {scheme!r}) are not small integers "
                    "times a power of two, so it has no bit-exact integer form; integer-only "
                    f"export needs power-of-two scales: schemes {', '.join(POWER_OF_TWO_SCHEMES)}"
                    + _DYADIC_HINT
                )
            w_codes, w_step = _grid_codes(layer, name, weight, qweight)
        bits = _signed_bits(w_codes)
        dtype = torch.int8 if bits <= 8 else torch.int16
        w_name = f"{name}.weight"
        self.tensors[w_name] = w_codes.to(dtype)
        self.weight_bits[w_name] = bits
        out = f"{name}.acc"
        if isinstance(layer, nn.Linear):
            self._emit("linear", (codes,), out, weight=w_name, input_range=[lo, hi])
        else:
            self._emit(
                "conv",
                (codes,),
                out,
                weight=w_name,
                stride=list(layer.stride),
                padding=list(layer.padding),
                dilation=list(layer.dilation),
                groups=int(layer.groups),
                input_range=[lo, hi],
            )
        code_top = float(max(abs(lo), abs(hi)))
        fan = w_codes.reshape(w_codes.shape[0], -1).abs().sum(dim=1).double()
        bound = fan * code_top
        acc_bits = _bits_of(bound)
        self._check_bound(_Value(out, e_w, bound), f"layer {name!r} accumulator")
        b_codes = None if qbias is None else _bias_codes(qbias)
        s_exp = _exact_log2(s_in)
        exact = s_exp is not None and bool((torch.frexp(w_step)[0] == 0.5).all())
        exact = exact and (qbias is None or b_codes is not None)
        if exact:
            value = _Value(out, s_exp + torch.log2(w_step).round().to(torch.int64), bound)
            if b_codes is not None:
                value = self._add_bias(name, value, *b_codes)
        elif self.dyadic:
            value = self._dyadic_accumulator(name, out, s_in * w_step, bound, qbias)
        else:
            raise ExportError(
                f"layer {name!r}: its bias is not quantized to a power-of-two scale; give it "
                "bias_bits (bias_scheme fixed_point or INT-SE layers)" + _DYADIC_HINT
            )
        self.report.append(
            {
                "layer": name,
                "weight_bits": bits,
                "input_bits": math.ceil(math.log2(hi - lo + 1)),
                "input_step": s_in,
                "accumulator_bits": acc_bits,
                "output_bits": _bits_of(value.bound),
                "weights": int(w_codes.numel()),
                "requant": "shift" if exact else "dyadic",
            }
        )
        return value

    def _quantized_bias(
        self, layer: QuantLayer, weight: Tensor, bias: Tensor | None
    ) -> Tensor | None:
        if bias is None:
            return None
        if isinstance(layer.bias_quant, IntSEBias):
            return layer.bias_quant(bias, layer.accumulator_exponent(weight))
        if layer.bias_quant is not None:
            return layer.bias_quant(bias)
        return bias

    def _dyadic_accumulator(
        self, name: str, acc: str, scale: Tensor, bound: Tensor, qbias: Tensor | None
    ) -> _Value:
        """Rescale an accumulator of step ``scale`` (per channel) onto a fine power-of-two grid.

        The grid puts the worst-case output near ``2**FINE_BITS`` (int64), far finer than any
        activation step, so the rescale and the bias (rounded onto that grid) cost little.
        """
        bias = torch.zeros_like(scale) if qbias is None else qbias.detach().double().reshape(-1)
        top = float((bound * scale + bias.abs()).max())
        e_fine = math.frexp(max(top, 2.0**-126))[1] - FINE_BITS
        ratio = scale * 2.0**-e_fine
        out = self._emit_dyadic(acc, ratio, bound, _INT64, f"{name}.rescaled")
        bound = bound * ratio + 1
        if qbias is not None:
            b_codes = torch.round(bias * 2.0**-e_fine)
            const = f"{name}.bias"
            self.tensors[const] = b_codes.to(torch.int64)
            shift = [0] * scale.numel()
            out = self._emit("add_const", (out,), f"{name}.out", shift=shift, const=const)
            bound = bound + b_codes.abs()
        exponent = torch.tensor([e_fine], dtype=torch.int64)
        value = _Value(out, exponent, bound, wide=True)
        return self._check_bound(value, f"layer {name!r} rescale")

    def _emit_dyadic(
        self, source: str, ratio: Tensor, bound: Tensor, limits: tuple[int, int], out: str
    ) -> str:
        """``sat(round(x * ratio))`` with ``ratio`` (per channel) as a multiplier and a shift.

        The multiplier keeps as many bits (up to 30) as ``x * multiplier`` leaves in int64.
        """
        mantissa_bits = min(_MULTIPLIER_BITS, WIDE_BITS - _bits_of(bound))
        if mantissa_bits < 8:
            raise ExportError(f"{out}: the dyadic rescale could overflow int64")
        mantissa, exponent = torch.frexp(ratio)  # ratio = mantissa * 2**exponent
        multiplier = torch.round(mantissa * 2.0**mantissa_bits).to(torch.int64)
        shift = mantissa_bits - exponent.to(torch.int64)
        multiplier = multiplier * torch.exp2((-shift).clamp_min(0).double()).to(torch.int64)
        too_far = (shift - WIDE_BITS).clamp_min(0)  # |x * multiplier| < 2**62: rounds to 0
        multiplier = torch.where(too_far > 0, torch.zeros_like(multiplier), multiplier)
        shift = shift.clamp(0, WIDE_BITS)
        if float((bound * multiplier.double()).max()) >= 2.0**WIDE_BITS:
            raise ExportError(f"{out}: the dyadic rescale could overflow int64")
        return self._emit(
            "requant_dyadic",
            (source,),
            out,
            multiplier=multiplier.tolist(),
            shift=shift.tolist(),
            lo=limits[0],
            hi=limits[1],
        )

    def _add_bias(self, name: str, value: _Value, b_codes: Tensor, e_b: Tensor) -> _Value:
        zero = b_codes == 0
        e_b = torch.where(zero, value.exponent, e_b)
        e_out = torch.minimum(value.exponent, e_b)
        b_out = b_codes * torch.exp2((e_b - e_out).double()).to(torch.int64)
        const = f"{name}.bias"
        self.tensors[const] = b_out.to(torch.int32)
        shift = (value.exponent - e_out).tolist()
        out = self._emit("add_const", (value.name,), f"{name}.out", shift=shift, const=const)
        bound = value.bound * torch.exp2((value.exponent - e_out).double()) + b_out.abs().double()
        return self._check_bound(_Value(out, e_out, bound), f"layer {name!r} bias add")

    def _input_codes(
        self, node: fx.Node, name: str, act: nn.Module, x_in: Any
    ) -> tuple[str, float, int, int]:
        """The codes of a layer's input: its value name, step, and code range."""
        scheme = act.scheme
        if not isinstance(scheme, UniformScheme):
            raise ExportError(
                f"layer {name!r}: input scheme {scheme.name!r} has no integer form; "
                "integer-only export needs a uniform grid, bit-exact with power-of-two scales: "
                f"{', '.join(POWER_OF_TWO_SCHEMES)}"
            )
        shape = self._shape(x_in)
        with torch.no_grad():
            probe = torch.zeros(shape, dtype=torch.float32)
            grid = scheme.grid(act.parameters_for(probe), act.signed())
        step = grid.step.detach().double().reshape(-1)
        if step.numel() != 1 or grid.offset is not None or grid.shift:
            raise ExportError(
                f"layer {name!r}: input scheme {scheme.name!r} uses the step "
                f"{step.tolist()} with an offset, a mid-rise grid or per-channel steps; "
                "integer-only export needs codes times one step: power-of-two scales: "
                f"{', '.join(POWER_OF_TWO_SCHEMES)}; with scales='dyadic' also {DYADIC_SCHEMES}"
            )
        s_in, lo, hi = float(step), int(grid.lo), int(grid.hi)
        if _exact_log2(s_in) is None and not self.dyadic:
            raise ExportError(
                f"layer {name!r}: input scheme {scheme.name!r} uses the step {s_in} (not a "
                "power of two); bit-exact integer-only export needs power-of-two scales: "
                f"{', '.join(POWER_OF_TWO_SCHEMES)}" + _DYADIC_HINT
            )
        source = self.values.get(x_in.name) if isinstance(x_in, fx.Node) else None
        if source is None:  # the model input
            if self.input_codes is not None and self.input_codes[1:] != (s_in, lo, hi):
                raise ExportError(
                    f"layer {name!r} quantizes the model input differently from "
                    "another layer; all input layers must share one input quantizer setting"
                )
            self.input_codes = ("input", s_in, lo, hi)
            return "input", s_in, lo, hi
        value = self._value(x_in, node)
        key = (value.name, s_in, lo, hi)
        s_exp = _exact_log2(s_in)
        if key not in self._requants and s_exp is None:
            self._requants[key] = self._dyadic_requant(value, s_in, lo, hi, f"{name}.input")
        if key not in self._requants:
            shift = (s_exp - value.exponent).tolist()
            rounding = torch.exp2(torch.tensor(shift, dtype=torch.float64).clamp_min(0))
            if float((value.bound + rounding).max()) >= 2.0 ** (value.limit_bits - 1):
                raise ExportError(
                    f"layer {name!r}: its input rounding could overflow "
                    f"{'int64' if value.wide else 'int32'}; lower the bit-widths of the layers "
                    "before it"
                )
            self._requants[key] = self._emit(
                "requant",
                (value.name,),
                f"{name}.input",
                shift=shift,
                divisor=value.divisor,
                lo=lo,
                hi=hi,
            )
        return self._requants[key], s_in, lo, hi

    def _dyadic_requant(self, value: _Value, step: float, lo: int, hi: int, out: str) -> str:
        """``sat(round(v * 2**e / (divisor * step)))`` by a multiplier and a right shift."""
        ratio = torch.exp2(value.exponent.double()) / (value.divisor * step)
        return self._emit_dyadic(value.name, ratio, value.bound, (lo, hi), out)

    # ----------------------------------------------------------------- element-wise
    def _add(self, node: fx.Node) -> _Value:
        if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise ExportError(f"{node.name!r}: only a + b of two tensors is supported")
        a, b = self._value(node.args[0], node), self._value(node.args[1], node)
        if a.divisor != 1 or b.divisor != 1:
            raise ExportError(f"{node.name!r}: adding an average is not supported")
        e = torch.minimum(a.exponent, b.exponent)
        sa, sb = a.exponent - e, b.exponent - e
        out = self._emit(
            "add", (a.name, b.name), node.name, shift_a=sa.tolist(), shift_b=sb.tolist()
        )
        bound = a.bound * torch.exp2(sa.double()) + b.bound * torch.exp2(sb.double())
        value = _Value(out, e, bound, wide=a.wide or b.wide)
        return self._check_bound(value, f"residual add {node.name!r}")

    def _relu(self, node: fx.Node) -> _Value:
        v = self._value(node.args[0], node)
        out = self._emit("relu", (v.name,), node.name)
        return _Value(out, v.exponent, v.bound, v.divisor, v.wide)

    def _clamp(self, node: fx.Node, low: float, high: float) -> _Value:
        v = self._value(node.args[0], node)
        if v.divisor != 1:
            raise ExportError(f"{node.name!r}: clamping an average is not supported")
        bounds = torch.tensor([low, high], dtype=torch.float64)
        _, e_bounds = _pow2_split(bounds.reshape(1, 2), 0)
        name, exponent, bound = v.name, v.exponent, v.bound
        finer = torch.minimum(exponent, e_bounds.expand_as(exponent))
        if bool((finer < exponent).any()):  # the bounds need a finer grid
            shift = exponent - finer
            name = self._emit("shift_left", (name,), node.name + ".fine", shift=shift.tolist())
            bound = bound * torch.exp2(shift.double())
            exponent = finer
        scale = torch.exp2(-exponent.double())
        lo = torch.round(low * scale).to(torch.int64)
        hi = torch.round(high * scale).to(torch.int64)
        out = self._emit("clamp", (name,), node.name, lo=lo.tolist(), hi=hi.tolist())
        bound = torch.minimum(bound, torch.maximum(lo.abs(), hi.abs()).double())
        value = _Value(out, exponent, bound, wide=v.wide)
        return self._check_bound(value, f"clamp {node.name!r}")

    # ----------------------------------------------------------------- shapes and pooling
    def _flatten(self, node: fx.Node, start_dim: int) -> _Value:
        v = self._value(node.args[0], node)
        shape = self._shape(node.args[0])  # type: ignore[arg-type]
        if start_dim % len(shape) != 1:
            raise ExportError(f"{node.name!r}: only flattening from dimension 1 is supported")
        per_channel = math.prod(shape[2:])
        out = self._emit("flatten", (v.name,), node.name, start_dim=1)
        return _Value(
            out,
            v.exponent.repeat_interleave(per_channel) if v.exponent.numel() > 1 else v.exponent,
            v.bound.repeat_interleave(per_channel) if v.bound.numel() > 1 else v.bound,
            v.divisor,
            v.wide,
        )

    def _adaptive_pool(self, node: fx.Node) -> _Value:
        shape_in = self._shape(node.args[0])[2:]  # type: ignore[arg-type]
        shape_out = self._shape(node)[2:]
        if any(i % o for i, o in zip(shape_in, shape_out, strict=True)):
            raise ExportError(
                f"{node.name!r}: adaptive pooling from {tuple(shape_in)} to {tuple(shape_out)} "
                "has uneven windows"
            )
        kernel = tuple(i // o for i, o in zip(shape_in, shape_out, strict=True))
        return self._pool(node, kernel, kernel)

    def _pool(self, node: fx.Node, kernel: Any, stride: Any, keep: bool = True) -> _Value:
        v = self._value(node.args[0], node)
        dims = len(self._shape(node.args[0])) - 2  # type: ignore[arg-type]
        kernel, stride = _pair_list(kernel, dims), _pair_list(stride, dims)
        if v.divisor != 1:
            raise ExportError(f"{node.name!r}: pooling an average is not supported")
        out = self._emit("sum_pool", (v.name,), node.name, kernel=kernel, stride=stride)
        if not keep:  # mean(dims) drops the pooled dimensions
            out = self._emit("flatten", (out,), node.name + ".flat", start_dim=1)
        area = math.prod(kernel)
        value = _Value(out, v.exponent, v.bound * area, v.divisor * area, v.wide)
        return self._check_bound(value, f"pooling {node.name!r}")

    def _max_pool(
        self, node: fx.Node, kernel: Any, stride: Any, padding: Any, dilation: Any
    ) -> _Value:
        v = self._value(node.args[0], node)  # max within a channel: exponents unchanged
        dims = len(self._shape(node.args[0])) - 2  # type: ignore[arg-type]
        out = self._emit(
            "max_pool",
            (v.name,),
            node.name,
            kernel=_pair_list(kernel, dims),
            stride=_pair_list(stride or kernel, dims),
            padding=_pair_list(padding, dims),
            dilation=_pair_list(dilation, dims),
        )
        return _Value(out, v.exponent, v.bound, v.divisor, v.wide)

    def _getitem(self, node: fx.Node) -> _Value:
        v = self._value(node.args[0], node)
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        shape = self._shape(node.args[0])  # type: ignore[arg-type]
        if not all(isinstance(i, slice) for i in index) or len(index) > len(shape):
            raise ExportError(f"{node.name!r}: only slicing with ':' steps is supported")
        name, exponent, bound = v.name, v.exponent, v.bound
        for dim, s in enumerate(index):
            if s == slice(None):
                continue
            if dim == 0:
                raise ExportError(f"{node.name!r}: slicing the batch dimension is not supported")
            start, stop, step = s.indices(shape[dim])
            name = self._emit(
                "slice", (name,), f"{node.name}.{dim}", dim=dim, start=start, stop=stop, step=step
            )
            if dim == 1 and exponent.numel() > 1:
                exponent, bound = exponent[start:stop:step], bound[start:stop:step]
        return _Value(name, exponent, bound, v.divisor, v.wide)

    def _pad(self, node: fx.Node) -> _Value:
        v = self._value(node.args[0], node)
        pads = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        fill = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        if mode != "constant" or fill not in (None, 0, 0.0):
            raise ExportError(f"{node.name!r}: only zero padding is supported")
        shape = self._shape(node.args[0])  # type: ignore[arg-type]
        out = self._emit("pad", (v.name,), node.name, pads=[int(p) for p in pads])
        exponent, bound = v.exponent, v.bound
        channel_pad = len(pads) // 2 >= len(shape) - 1
        if channel_pad:
            k = 2 * (len(shape) - 2)
            before, after = int(pads[k]), int(pads[k + 1])
            if exponent.numel() == 1:
                exponent = exponent.expand(shape[1]).clone()
                bound = bound.expand(shape[1]).clone()
            fill_e = exponent.min().reshape(1)
            exponent = torch.cat([fill_e.expand(before), exponent, fill_e.expand(after)])
            zero = torch.zeros(1, dtype=torch.float64)
            bound = torch.cat([zero.expand(before), bound, zero.expand(after)])
        return _Value(out, exponent, bound, v.divisor, v.wide)


def _weight_of(layer: QuantLayer, name: str, weight: Tensor) -> Tensor:
    quantizer = layer.weight_quant
    fraction = getattr(quantizer, "quantized_fraction", None)
    if callable(fraction) and bool(getattr(quantizer, "started", True)) and fraction() < 1.0:
        raise ExportError(
            f"layer {name!r}: only {fraction():.1%} of its weights are quantized "
            "(incremental schedule not finished); finish the schedule before export"
        )
    return quantizer(weight).detach()


def _bias_codes(qbias: Tensor) -> tuple[Tensor, Tensor] | None:
    """The bias as int32 codes times per-entry powers of two, or None if it is not."""
    codes, exponents = _pow2_split(qbias.reshape(-1, 1), 0)
    codes = codes.reshape(-1)
    return None if int(codes.abs().max()) >= 2**31 else (codes, exponents)


def _grid_codes(
    layer: QuantLayer, name: str, weight: Tensor, qweight: Tensor
) -> tuple[Tensor, Tensor]:
    """Weight codes and per-output-channel steps from a uniform weight quantizer's grid."""
    quantizer = layer.weight_quant
    scheme = quantizer.scheme
    if not isinstance(scheme, UniformScheme):
        raise ExportError(
            f"layer {name!r}: weight scheme {scheme.name!r} is not a uniform grid, so it has "
            "no integer form; use a uniform scheme (lsq, clip, int_se, ...)"
        )
    signed = getattr(quantizer, "quantizer", quantizer).signed()
    grid = scheme.grid(quantizer.parameters_for(weight), signed)
    if grid.offset is not None or grid.shift not in (0.0, 0.5):
        raise ExportError(
            f"layer {name!r}: weight scheme {scheme.name!r} has an offset; integer-only "
            f"export needs codes times a step: {', '.join(POWER_OF_TWO_SCHEMES)}, "
            f"{DYADIC_SCHEMES}"
        )
    channels = qweight.shape[0]
    # A mid-rise level (k + 1/2) * step is the odd code 2k + 1 times step / 2.
    step = grid.step.detach().double() * (0.5 if grid.shift else 1.0)
    step = step.reshape(-1).expand(channels) if step.numel() == 1 else step.reshape(channels)
    view = step.reshape(-1, *([1] * (qweight.dim() - 1)))
    codes = torch.round(qweight.double() / view)
    if not torch.equal((codes * view).float(), qweight.float()):
        raise ExportError(f"layer {name!r}: its weights are not codes times the grid step")
    return codes.to(torch.int64), step


def _pair_list(value: Any, dims: int) -> list[int]:
    if isinstance(value, int):
        return [value] * dims
    return [int(v) for v in value]


__all__ = [
    "ACCUMULATOR_BITS",
    "DYADIC_SCHEMES",
    "FINE_BITS",
    "POWER_OF_TWO_SCHEMES",
    "WIDE_BITS",
    "ExportError",
    "Lowering",
]
