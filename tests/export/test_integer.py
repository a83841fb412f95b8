"""Integer-only export: bit-exact against the fake-quantized model, integer dtypes, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_autoq import QuantPolicy, convert
from lightning_autoq.export import (
    ExportError,
    compare_with_simulation,
    export_integer,
    lock_for_export,
)
from lightning_autoq.quant.incremental import IncrementalWeight
from tests.export.models import (
    PlainCNN,
    calibrated,
    int_se_policy,
    quantized_mobilenet_v2,
    quantized_plain_cnn,
    quantized_resnet20,
    real_images,
)


def assert_exact(model: nn.Module, x: torch.Tensor) -> None:
    integer_model = export_integer(model, x[:4], check=False)
    report = compare_with_simulation(lock_for_export(model), integer_model, x)
    assert report.elements == x.shape[0] * 10
    assert report.mismatches == 0, report


@pytest.mark.parametrize(("bits", "scheme"), [(2, "int_se"), (4, "int_se"), (8, "fixed_point")])
def test_resnet20_is_bit_exact_on_random_inputs(single_thread, bits: int, scheme: str) -> None:
    assert_exact(quantized_resnet20(bits, scheme), torch.randn(16, 1, 28, 28) * 2)


def test_resnet20_is_bit_exact_on_real_images(single_thread) -> None:
    images = real_images(64)
    if images is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    assert_exact(quantized_resnet20(4), images)


def test_mobilenet_v2_depthwise_relu6_is_bit_exact(single_thread) -> None:
    assert_exact(quantized_mobilenet_v2(8), torch.randn(4, 3, 32, 32))


def test_plain_cnn_with_linear_and_max_pool_is_bit_exact(single_thread) -> None:
    assert_exact(quantized_plain_cnn(6), torch.randn(32, 1, 14, 14))


def test_every_intermediate_value_is_an_integer_tensor(single_thread) -> None:
    integer_model = export_integer(quantized_resnet20(4), torch.randn(4, 1, 28, 28))
    x = integer_model.quantize_input(torch.randn(2, 1, 28, 28))
    values = integer_model.run(x, keep=True)
    assert len(values) == len(integer_model.program.nodes) + 1
    for name, value in values.items():
        assert not value.is_floating_point(), (name, value.dtype)
        assert value.dtype in (torch.int8, torch.int16, torch.int32, torch.int64), name
    ops = {node.op for node in integer_model.program.nodes}
    assert {"conv", "add", "requant", "sum_pool", "linear", "pad", "slice"} <= ops


def test_export_leaves_the_model_unchanged(single_thread) -> None:
    model = quantized_resnet20(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_integer(model, torch.randn(4, 1, 28, 28))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, "batchnorm", None) for m in model.modules())


def test_accumulator_bits_are_the_worst_case_over_the_input_range() -> None:
    layer = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        layer[0].weight.copy_(torch.tensor([[0.5, -0.25, 0.125], [1.0, 0.0, -0.5]]))
    policy = QuantPolicy(
        default={"scheme": "fixed_point", "weight_bits": 8, "act_bits": 8, "bias_bits": 8}
    )
    model = calibrated(layer, policy, (3,))
    integer_model = export_integer(model, torch.randn(4, 3))
    (row,) = integer_model.program.report
    codes = integer_model.program.tensors["0.weight"].to(torch.int64)
    lo, hi = integer_model.program.input_range
    worst = int(codes.abs().sum(dim=1).max()) * max(abs(lo), hi)
    assert row["accumulator_bits"] == math.ceil(math.log2(worst + 1)) + 1


def test_a_possible_int32_overflow_is_refused() -> None:
    # 2^19 weights of about 64 codes each times 128 input codes: about 2^32.
    wide = nn.Sequential(nn.Linear(2**19, 1, bias=False))
    with torch.no_grad():
        wide[0].weight.uniform_(-1.0, 1.0)
    policy = QuantPolicy(default={"scheme": "int_se", "weight_bits": 8, "act_bits": 8})
    model = calibrated(wide, policy, (2**19,))
    with pytest.raises(ExportError, match=r"needs 3\d bits, more than the 32-bit accumulator"):
        export_integer(model, torch.randn(2, 2**19), check=False)


@pytest.mark.parametrize(("scheme", "bits"), [("lsq", 2), ("binary", 1), ("clip", 3)])
def test_float_scaled_schemes_are_refused_naming_the_allowed_ones(scheme: str, bits: int) -> None:
    policy = QuantPolicy(
        default={"scheme": scheme, "weight_bits": bits, "act_bits": bits}, first_last_bits=None
    )
    model = calibrated(PlainCNN(), policy, (1, 14, 14))
    with pytest.raises(ExportError, match=r"power-of-two scales: .*int_se, fixed_point"):
        export_integer(model, torch.randn(2, 1, 14, 14))


def test_a_float_input_layer_is_refused() -> None:
    policy = int_se_policy(4)
    policy = QuantPolicy(policy.default, overrides={"fc2": {"act_bits": None}})
    model = calibrated(PlainCNN(), policy, (1, 14, 14))
    with pytest.raises(ExportError, match="'fc2' has a float input"):
        export_integer(model, torch.randn(2, 1, 14, 14))


def test_an_uncalibrated_model_is_refused() -> None:
    model = convert(PlainCNN(), int_se_policy(4)).eval()
    with pytest.raises(ExportError, match="has seen no data"):
        export_integer(model, torch.randn(2, 1, 14, 14))


def test_an_unconverted_model_is_refused() -> None:
    with pytest.raises(ExportError, match="has no quantized layer"):
        export_integer(PlainCNN(), torch.randn(2, 1, 14, 14))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


def test_an_untraceable_model_is_refused() -> None:
    model = calibrated(Branchy(), int_se_policy(4), (4,))
    with pytest.raises(ExportError, match="cannot trace Branchy"):
        export_integer(model, torch.randn(2, 4))


class Sigmoidal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Sigmoid()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


def test_an_operation_without_integer_form_is_refused_by_name() -> None:
    model = calibrated(Sigmoidal(), int_se_policy(4), (4,))
    with pytest.raises(ExportError, match=r"module 'act' \(Sigmoid\) has no integer form"):
        export_integer(model, torch.randn(2, 4))


def test_an_unfinished_incremental_schedule_is_refused() -> None:
    model = quantized_plain_cnn(6)
    layer = model.fc1
    incremental = IncrementalWeight(layer.weight_quant, layer.weight, "magnitude")
    incremental.start(layer.weight)
    incremental.advance(layer.weight, 0.5)
    layer.weight_quant = incremental
    with pytest.raises(ExportError, match=r"'fc1': only 50.0% of its weights are quantized"):
        export_integer(model, torch.randn(2, 1, 14, 14))
    incremental.advance(layer.weight, 1.0)
    assert_exact(model, torch.randn(8, 1, 14, 14))
