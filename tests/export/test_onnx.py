"""ONNX export of the integer program: integer operators, equal to the runtime in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_autoq.export import export_integer
from lightning_autoq.export.onnx import save_onnx, to_onnx
from tests.export.models import quantized_mobilenet_v2, quantized_plain_cnn, quantized_resnet20

onnxruntime = pytest.importorskip("onnxruntime")
INTEGER_TYPES = {2, 3, 6, 7, 9}  # onnx.TensorProto: uint8, int8, int32, int64, bool


def run_both(model, x: torch.Tensor, path: Path) -> tuple[np.ndarray, np.ndarray]:
    integer_model = export_integer(model, x[:2])
    codes = integer_model.quantize_input(x)
    save_onnx(integer_model, codes[:1], path)
    session = onnxruntime.InferenceSession(str(path))
    (got,) = session.run(None, {"input": codes.numpy()})
    return got, integer_model(codes).numpy()


@pytest.mark.parametrize("bits", [4, 8])
def test_resnet20_onnx_equals_the_integer_runtime(single_thread, tmp_path: Path, bits: int):
    got, expected = run_both(
        quantized_resnet20(bits), torch.randn(6, 1, 28, 28), tmp_path / "m.onnx"
    )
    assert got.dtype == np.int32
    assert np.array_equal(got, expected)


def test_mobilenet_v2_onnx_equals_the_integer_runtime(single_thread, tmp_path: Path) -> None:
    got, expected = run_both(
        quantized_mobilenet_v2(8), torch.randn(3, 3, 32, 32), tmp_path / "m.onnx"
    )
    assert np.array_equal(got, expected)


def test_every_onnx_value_is_an_integer(single_thread, tmp_path: Path) -> None:
    import onnx

    integer_model = export_integer(quantized_resnet20(4), torch.randn(2, 1, 28, 28))
    model = to_onnx(integer_model, integer_model.quantize_input(torch.randn(1, 1, 28, 28)))
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    assert len(values) > len(model.graph.node)  # shape inference typed every value
    assert {v.type.tensor_type.elem_type for v in values} <= INTEGER_TYPES
    assert {i.data_type for i in model.graph.initializer} <= INTEGER_TYPES
    ops = {n.op_type for n in model.graph.node}
    assert {"ConvInteger", "MatMulInteger", "ReduceSum"} <= ops
    assert not ops & {"Conv", "MatMul", "QuantizeLinear", "DequantizeLinear"}


def test_plain_cnn_max_pooling_onnx_equals_the_integer_runtime(single_thread, tmp_path: Path):
    # Max pooling with and without padding: strided slices and an integer Max.
    got, expected = run_both(quantized_plain_cnn(6), torch.randn(5, 1, 14, 14), tmp_path / "p.onnx")
    assert np.array_equal(got, expected)


def test_dyadic_program_onnx_equals_the_integer_runtime(single_thread, tmp_path: Path) -> None:
    from tests.export.test_dyadic import lsq_resnet20

    x = torch.randn(4, 1, 28, 28)
    integer_model = export_integer(lsq_resnet20(4), x[:2], scales="dyadic")
    codes = integer_model.quantize_input(x)
    save_onnx(integer_model, codes[:1], tmp_path / "d.onnx")
    (got,) = onnxruntime.InferenceSession(str(tmp_path / "d.onnx")).run(
        None, {"input": codes.numpy()}
    )
    expected = integer_model(codes).numpy()
    assert got.dtype == np.int64 and np.array_equal(got, expected)


def test_windowed_average_pooling_onnx_equals_the_integer_runtime(single_thread, tmp_path: Path):
    from torch import nn

    from tests.export.models import calibrated, int_se_policy

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),  # 12x12 -> 6x6: window sums, the division folded into the requant
        nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(),
        nn.AvgPool2d(2, stride=1),
        nn.Flatten(),
        nn.Linear(4 * 1 * 1, 10),
    )
    model = calibrated(net, int_se_policy(6), (1, 12, 12))
    got, expected = run_both(model, torch.randn(5, 1, 12, 12), tmp_path / "avg.onnx")
    assert np.array_equal(got, expected)
