"""Adapters for the peer libraries of ``benchmarks/peers.py``: Brevitas, torch.ao, torchao, NNCF.

Each builder turns the float ResNet-20 into that library's quantization-aware-training model
(first conv and last linear at ``edge_bits``, every other conv at ``bits``), describes which
layer is at which bits, and exports it the library's own way. The optional libraries are
imported inside the functions: a missing one is reported by :func:`missing` as a reason.

Brevitas: https://github.com/Xilinx/brevitas ; torch.ao QAT (FX graph mode):
https://pytorch.org/docs/stable/quantization.html ; torchao QAT:
https://github.com/pytorch/ao/tree/main/torchao/quantization/qat ; NNCF:
https://github.com/openvinotoolkit/nncf
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import math
import os
import tempfile
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn


def missing(module: str) -> str | None:
    """None if ``module`` imports, else the reason it does not."""
    try:
        importlib.import_module(module)
    except Exception as err:  # an optional peer: any import failure is a skip reason
        return f"import {module} failed: {type(err).__name__}: {err}"
    return None


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The float model's convs and linears, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def edge_names(model: nn.Module) -> tuple[str, str]:
    """The first and last weight layers: the ones every contender keeps at ``edge_bits``."""
    names = [n for n, _ in weight_layers(model)]
    return names[0], names[-1]


def layer_bits(model: nn.Module, bits: int, edge_bits: int) -> dict[str, int]:
    """Weight bits of every conv/linear of the float ``model`` under the shared rule."""
    edges = edge_names(model)
    return {n: edge_bits if n in edges else bits for n, _ in weight_layers(model)}


def packed_weight_bytes(model: nn.Module, bits: dict[str, int]) -> int:
    """Theoretical size: each conv/linear weight at its bits, packed; nothing else counted."""
    numels = {n: m.weight.numel() for n, m in weight_layers(model)}
    return math.ceil(sum(numels[n] * b for n, b in bits.items()) / 8)


def _file_size(write: Any, suffix: str) -> int:
    """Bytes of the file ``write(path)`` produces (in a temporary folder)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"model{suffix}")
        write(path)
        return os.path.getsize(path)


# --- Brevitas -------------------------------------------------------------------------------


def brevitas_model(float_model: nn.Module, bits: int, edge_bits: int) -> nn.Module:
    """A copy of ``float_model`` with Brevitas QuantConv2d/QuantLinear layers.

    Weights: ``Int8WeightPerTensorFloat`` at the layer's bits with a learned scale
    (``PARAMETER_FROM_STATS``: initialized from the weight statistics, then trained).
    Layer inputs: ``Int8ActPerTensorFloat`` (signed, the first layer: normalized images) or
    ``Uint8ActPerTensorFloat`` (post-ReLU inputs) at the layer's bits, learned scale after
    Brevitas' runtime-statistics warm-up. ReLU, batch norm and biases stay float, as in the
    lightning_autoq LSQ contender (which quantizes each conv/linear's weight and input).
    """
    import brevitas.nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerTensorFloat,
        Uint8ActPerTensorFloat,
    )

    model = copy.deepcopy(float_model).cpu()
    first = weight_layers(model)[0][0]
    for name, bit in layer_bits(model, bits, edge_bits).items():
        old = model.get_submodule(name)
        common = {
            "bias": old.bias is not None,
            "weight_quant": Int8WeightPerTensorFloat,
            "weight_bit_width": bit,
            "weight_scaling_impl_type": ScalingImplType.PARAMETER_FROM_STATS,
            "input_quant": Int8ActPerTensorFloat if name == first else Uint8ActPerTensorFloat,
            "input_bit_width": bit,
        }
        if isinstance(old, nn.Conv2d):
            new = qnn.QuantConv2d(
                old.in_channels,
                old.out_channels,
                old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                dilation=old.dilation,
                groups=old.groups,
                **common,
            )
        else:
            new = qnn.QuantLinear(old.in_features, old.out_features, **common)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def brevitas_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Weight and input bits of each Brevitas layer, read back from its quantizers."""
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

    rows = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantWeightBiasInputOutputLayer):
            rows[name] = {
                "weight_bits": int(m.weight_quant.bit_width()),
                "input_bits": int(m.input_quant.bit_width()),
                "weight_codes": _code_span(m.quant_weight().int()),
            }
    return rows


def _code_span(codes: Tensor) -> list[int]:
    return [int(codes.min()), int(codes.max())]


def brevitas_export(model: nn.Module, example: Tensor) -> dict[str, Any]:
    """Brevitas' QCDQ ONNX export: its size and the operators the graph computes with."""
    import onnx
    from brevitas.export import export_onnx_qcdq

    cpu = copy.deepcopy(model).cpu().eval()
    ops: Counter[str] = Counter()

    def write(path: str) -> None:
        export_onnx_qcdq(cpu, args=example[:1].cpu(), export_path=path, dynamo=False)
        ops.update(node.op_type for node in onnx.load(path).graph.node)

    size = _file_size(write, ".onnx")
    return {
        "format": "Brevitas QCDQ ONNX (export_onnx_qcdq): int8 weight initializers, "
        "Clip to the k-bit range, DequantizeLinear, float Conv/Gemm",
        "bytes": size,
        "onnx_ops": dict(sorted(ops.items())),
        "integer_only": False,
        "integer_only_reason": "weights and activations are dequantized to float "
        "(DequantizeLinear) and Conv/Gemm/Add run in float; codes are stored in int8 "
        "containers whatever k is",
    }


# --- torch.ao (FX graph mode QAT) -----------------------------------------------------------


def torch_ao_qconfig(bits: int) -> Any:
    """FakeQuantize with k-bit ranges: weights per-channel symmetric, activations affine."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
    )

    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-(2 ** (bits - 1)),
        quant_max=2 ** (bits - 1) - 1,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=2**bits - 1,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    return QConfig(activation=activation, weight=weight)


def torch_ao_model(float_model: nn.Module, bits: int, edge_bits: int, example: Tensor) -> nn.Module:
    """``prepare_qat_fx`` of a copy: conv-BN(-ReLU) fused, fake-quant at k bits.

    The global qconfig is k-bit; the first conv and the last linear get ``edge_bits``
    (``QConfigMapping.set_module_name``). torch.ao places activation fake-quant on the
    outputs of ops (its graph-mode rule), not on each layer's input.
    """
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    first, last = edge_names(float_model)
    mapping = (
        QConfigMapping()
        .set_global(torch_ao_qconfig(bits))
        .set_module_name(first, torch_ao_qconfig(edge_bits))
        .set_module_name(last, torch_ao_qconfig(edge_bits))
    )
    model = copy.deepcopy(float_model).cpu().train()
    return prepare_qat_fx(model, mapping, example_inputs=(example[:1].cpu(),))


def _range_bits(fake_quant: nn.Module) -> int:
    return round(math.log2(fake_quant.quant_max - fake_quant.quant_min + 1))


def torch_ao_layers(prepared: nn.Module) -> dict[str, Any]:
    """Weight bits per layer and the bits of each activation fake-quant, from the model."""
    from torch.ao.quantization import FakeQuantize

    weights = {
        name: {"weight_bits": _range_bits(m.weight_fake_quant)}
        for name, m in prepared.named_modules()
        if isinstance(getattr(m, "weight_fake_quant", None), FakeQuantize)
    }
    outputs = {}
    for node in prepared.graph.nodes:  # type: ignore[union-attr]
        if node.op == "call_module" and str(node.target).startswith("activation_post_process"):
            fq = prepared.get_submodule(str(node.target))
            source = node.args[0]
            key = source.target if source.op == "call_module" else source.name
            outputs[str(key)] = _range_bits(fq)
    return {"weights": weights, "activation_outputs": outputs}


def torch_ao_export(prepared: nn.Module, loader: Any) -> dict[str, Any]:
    """``convert_fx`` on CPU: its state_dict size, the stored code range and its accuracy."""
    from torch.ao.quantization.quantize_fx import convert_fx

    ranges = {
        name: (int(m.weight_fake_quant.quant_min), int(m.weight_fake_quant.quant_max))
        for name, m in prepared.named_modules()
        if hasattr(m, "weight_fake_quant")
    }
    converted = convert_fx(copy.deepcopy(prepared).cpu().eval())

    def write(path: str) -> None:
        torch.save(converted.state_dict(), path)

    kinds = Counter(
        f"{type(m).__module__}.{type(m).__name__}"
        for m in converted.modules()
        if type(m).__module__.startswith("torch.ao.nn")
    )
    quantized = (torch.ao.nn.quantized.Conv2d, torch.ao.nn.quantized.Linear)
    codes = {}
    for name, m in converted.named_modules():
        if isinstance(m, quantized):
            span = _code_span(m.weight().int_repr())
            lo, hi = ranges[name]
            codes[name] = {
                "dtype": str(m.weight().dtype),
                "codes": span,
                "qat_range": [lo, hi],
                "within_qat_range": lo <= span[0] and span[1] <= hi,
            }
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((converted(x.cpu()).argmax(1) == y).sum())
            total += int(y.numel())
    return {
        "format": "torch.ao convert_fx (x86/fbgemm quantized modules), torch.save(state_dict)",
        "bytes": _file_size(write, ".pt"),
        "converted_test_acc": correct / max(total, 1),
        "quantized_modules": dict(sorted(kinds.items())),
        "weight_codes": codes,
        "layers_outside_qat_range": [n for n, c in codes.items() if not c["within_qat_range"]],
        "integer_only": False,
        "integer_only_reason": "convert_fx gives the int8 (quint8/qint8) kernels whatever "
        "the range: k-bit codes are stored in int8 containers and run through the 8-bit "
        "kernels, which requantize with float scales; the input quantize and output "
        "dequantize are float ops. convert_fx re-quantizes the weights with the qint8 "
        "limits, so codes can leave the k-bit QAT range (layers_outside_qat_range): the "
        "converted model is then not the trained k-bit model (compare converted_test_acc)",
    }


# --- torchao ---------------------------------------------------------------------------------


def torchao_coverage(float_model: nn.Module, bits: int) -> dict[str, Any]:
    """Apply torchao's QAT ``prepare`` step to a copy and list the layers it fake-quantized."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    dtype = getattr(torch, f"int{bits}")
    model = copy.deepcopy(float_model).cpu()
    before = {n: type(m) for n, m in model.named_modules()}
    config = QATConfig(
        weight_config=IntxFakeQuantizeConfig(dtype, granularity="per_channel"), step="prepare"
    )
    quantize_(model, config)
    swapped = sorted(
        n for n, m in model.named_modules() if n in before and type(m) is not before[n]
    )
    untouched = [n for n, m in weight_layers(float_model) if n not in swapped]
    return {"fake_quantized_layers": swapped, "left_float": untouched}


# --- NNCF ------------------------------------------------------------------------------------


def nncf_probe(float_model: nn.Module, bits: int, example: Tensor) -> str | None:
    """Ask ``nncf.quantize`` (its torch QAT entry point) for W{bits}A{bits}; its error, or None."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    params = QuantizationParameters(num_bits=bits)
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=params, activations_quantization_params=params
    )
    dataset = nncf.Dataset([example[:8].cpu()])
    try:
        nncf.quantize(
            copy.deepcopy(float_model).cpu().eval(),
            dataset,
            subset_size=1,
            advanced_parameters=advanced,
        )
    except Exception as err:  # the library's own refusal is the result being recorded
        return " ".join(f"{type(err).__name__}: {err}".split())
    return None
