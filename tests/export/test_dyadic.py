"""Dyadic export of float-step schemes (LSQ, clip): integer multipliers and shifts."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_autoq import QuantPolicy
from lightning_autoq.export import (
    ExportError,
    compare_with_simulation,
    export_integer,
    lock_for_export,
)
from lightning_autoq.models import resnet20
from lightning_autoq.nn import QuantLayer
from lightning_autoq.runtime import IntegerModel, load, ops, save
from tests.export.models import PlainCNN, calibrated, real_images


def lsq_resnet20(bits: int) -> nn.Module:
    policy = QuantPolicy(
        default={"scheme": "lsq", "weight_bits": bits, "act_bits": bits}, first_last_bits=8
    )
    return calibrated(resnet20(num_classes=10, in_channels=1, width=8), policy, (1, 28, 28))


def layer_input_codes(
    simulation: nn.Module, x: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each quantized layer's input codes in the fake-quantized model, and input / step."""
    codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, layer in simulation.named_modules():
        if isinstance(layer, QuantLayer) and layer.act_quant is not None:

            def keep(module, args, out, name=name):
                grid = module.scheme.grid(module.parameters_for(args[0]), module.signed())
                step = grid.step.double()
                codes[name] = (torch.round(out / grid.step).to(torch.int32), args[0] / step)

            hooks.append(layer.act_quant.register_forward_hook(keep))
    with torch.no_grad():
        simulation(x)
    for hook in hooks:
        hook.remove()
    return codes


def test_requant_dyadic_is_the_exact_rounded_rational() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**40), 2**40, (3, 2, 5), generator=g)
    multiplier = torch.tensor([1_000_003, 77]).reshape(1, 2, 1)
    shift = torch.tensor([33, 4]).reshape(1, 2, 1)
    got = ops.requant_dyadic(x, multiplier, shift, -(2**45), 2**45)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in x.shape)).tolist():
        c = index[1]
        q = Fraction(int(x[tuple(index)]) * int(multiplier[0, c, 0]), 2 ** int(shift[0, c, 0]))
        assert int(got[tuple(index)]) == round(q)  # Python rounds halves to even, as torch
    ties = torch.tensor([[[3, 5, -3, -5]]])  # 1.5, 2.5, -1.5, -2.5
    assert ops.requant_dyadic(ties, torch.tensor(1), torch.tensor(1), -9, 9).tolist() == [
        [[2, 2, -2, -2]]
    ]
    assert ops.requant_dyadic(ties, torch.tensor(1), torch.tensor(0), -4, 4).tolist() == [
        [[3, 4, -3, -4]]
    ]


def test_lsq_needs_dyadic_scales_and_says_so() -> None:
    model = lsq_resnet20(4)
    with pytest.raises(ExportError, match=r"power-of-two scales: int_se, fixed_point.*'dyadic'"):
        export_integer(model, torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"scales='float' is not allowed; allowed: power_of_two"):
        export_integer(model, torch.randn(2, 1, 28, 28), scales="float")  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_resnet20_agrees_with_the_simulation(single_thread, bits: int) -> None:
    model = lsq_resnet20(bits)
    x = torch.randn(32, 1, 28, 28)
    integer_model = export_integer(model, x[:4], scales="dyadic")
    ops_used = {node.op for node in integer_model.program.nodes}
    assert "requant_dyadic" in ops_used and "requant" not in ops_used
    assert {row["requant"] for row in integer_model.program.report} == {"dyadic"}
    simulation = lock_for_export(model)
    report = compare_with_simulation(simulation, integer_model, x)
    assert report.top1_agreement == 1.0, report
    # The logits differ only by float32 rounding: far below one logit unit.
    scale = 2.0**integer_model.output_exponent
    assert report.max_code_difference * scale < 0.1, report
    # The input codes of the first layer after a dyadic rescale differ from the simulation's
    # only where its value is within float32 error of a rounding tie; later layers inherit
    # those flips, which stay rare.
    values = integer_model.run(integer_model.quantize_input(x), keep=True)
    reference = layer_input_codes(simulation, x)
    assert torch.equal(values["input"], reference["conv1"][0])
    codes, scaled = reference["layer1.0.conv1"]
    flipped = values["layer1.0.conv1.input"] != codes
    distance_to_tie = (scaled - scaled.floor() - 0.5).abs()
    assert bool((distance_to_tie[flipped] < 1e-4).all())
    total = differ = 0
    for name, (codes, _) in reference.items():
        got = values["input" if name == "conv1" else f"{name}.input"]
        assert got.dtype == torch.int32 and got.shape == codes.shape, name
        total += codes.numel()
        differ += int((got != codes).sum())
    assert differ <= 5e-3 * total, (differ, total)


def test_every_dyadic_intermediate_is_an_integer_tensor(single_thread) -> None:
    integer_model = export_integer(lsq_resnet20(4), torch.randn(4, 1, 28, 28), scales="dyadic")
    values = integer_model.run(integer_model.quantize_input(torch.randn(2, 1, 28, 28)), keep=True)
    for name, value in values.items():
        assert value.dtype in (torch.int8, torch.int16, torch.int32, torch.int64), name
    assert values[integer_model.program.output_name].dtype == torch.int64
    # The worst case of every int64 value stays inside 62 bits (checked at export).
    assert all(row["accumulator_bits"] <= 32 for row in integer_model.program.report)


def test_dyadic_file_round_trip_gives_the_same_logits(single_thread, tmp_path: Path) -> None:
    integer_model = export_integer(lsq_resnet20(4), torch.randn(4, 1, 28, 28), scales="dyadic")
    assert integer_model.program.input_multiplier % 2 == 1
    path = save(integer_model.program, tmp_path / "lsq.int.safetensors")
    loaded = load(path)
    x = torch.randn(8, 1, 28, 28)
    assert loaded.input_multiplier == integer_model.program.input_multiplier
    assert torch.equal(IntegerModel(loaded).predict(x), integer_model.predict(x))


def test_real_images_give_the_same_predictions(single_thread) -> None:
    images = real_images(64)
    if images is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    model = lsq_resnet20(4)
    integer_model = export_integer(model, images[:8], scales="dyadic")
    report = compare_with_simulation(lock_for_export(model), integer_model, images)
    assert report.top1_agreement == 1.0, report


def test_power_of_two_layers_stay_exact_inside_a_dyadic_export(single_thread) -> None:
    policy = QuantPolicy(
        default={"scheme": "int_se", "weight_bits": 4, "act_bits": 4, "bias_bits": 8},
        overrides={"fc2": {"scheme": "lsq", "act_bits": 6}},
        first_last_bits=None,
    )
    model = calibrated(PlainCNN(), policy, (1, 14, 14))
    integer_model = export_integer(model, torch.randn(4, 1, 14, 14), scales="dyadic")
    kinds = {row["layer"]: row["requant"] for row in integer_model.program.report}
    assert kinds["fc2"] == "dyadic"
    assert {k for k, v in kinds.items() if v == "shift"}, kinds


def test_signed_clip_activations_are_refused_naming_what_works() -> None:
    policy = QuantPolicy(
        default={"scheme": "clip", "weight_bits": 4, "act_bits": 4}, first_last_bits=None
    )
    model = calibrated(PlainCNN(), policy, (1, 14, 14))  # signed input: a mid-rise grid
    with pytest.raises(ExportError, match=r"mid-rise grid.*scales='dyadic' also lsq, clip"):
        export_integer(model, torch.randn(2, 1, 14, 14), scales="dyadic")
