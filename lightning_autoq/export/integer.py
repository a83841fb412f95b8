"""Integer-only export: fold batch norm, lower to integers, check bit-exactness.

IOIQ (Yang et al. 2023) exports a model whose inference has no floating point: integer
weights and activations, int32 accumulation, and a rounding right shift with saturation
between layers. :func:`export_integer` does that for a fake-quantized model with
power-of-two scales and checks that the integer program computes exactly what the
fake-quantized model computes. Other uniform scales (LSQ, clip) get dyadic
multipliers with ``scales="dyadic"``; those programs are compared with the simulation
(mismatch count, top-1 agreement), since float32 rounding near ties cannot be reproduced.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_autoq.export.fold import find_bn_pairs
from lightning_autoq.export.inputs import check_example_input
from lightning_autoq.export.lowering import ExportError, Lowering
from lightning_autoq.nn import QuantLayer
from lightning_autoq.runtime import IntegerModel


def lock_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable batch norm folded and locked.

    This copy is the fake-quantized reference the integer model matches bit for bit; the
    original model is left unchanged. Quantized layers that are already paired (by
    :class:`~lightning_autoq.callbacks.BatchNormLock`) keep their pairing.

    Raises:
        ExportError: ``model`` has no quantized layer, or one whose input quantizer has seen
            no data.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise ExportError(
            f"{type(model).__name__} has no quantized layer; convert it (Quantize callback or "
            "lightning_autoq.convert) before export"
        )
    for name, layer in layers:
        act = layer.act_quant
        if act is not None and act.stateful and not bool(act.initialized):
            raise ExportError(
                f"layer {name!r}: its input quantizer has seen no data; train or calibrate "
                "(run a few batches through the model) before export"
            )
    locked = copy.deepcopy(model).eval()
    try:
        pairs = find_bn_pairs(locked)
    except ValueError as err:
        raise ExportError(
            str(err).replace("to find conv -> BatchNorm pairs", "for export")
        ) from err
    for layer_name, bn_name in pairs:
        layer = locked.get_submodule(layer_name)
        layer.attach_batchnorm(locked.get_submodule(bn_name))  # type: ignore[operator]
        layer.bn_locked.fill_(True)  # type: ignore[union-attr]
    return locked


Scales = Literal["power_of_two", "dyadic"]
SCALES: tuple[str, ...] = ("power_of_two", "dyadic")


def check_scales(scales: object, min_top1_agreement: float = 1.0) -> None:
    """Raise ValueError unless ``scales`` is one of :data:`SCALES` and the threshold is in
    [0, 1]."""
    if scales not in SCALES:
        raise ValueError(f"scales={scales!r} is not allowed; allowed: {', '.join(SCALES)}")
    if not 0.0 <= min_top1_agreement <= 1.0:
        raise ValueError(
            f"min_top1_agreement={min_top1_agreement!r} is not allowed; allowed: [0, 1]"
        )


def lower(
    simulation: nn.Module, example_input: Tensor, scales: Scales = "power_of_two"
) -> IntegerModel:
    """The integer model of ``simulation`` (a :func:`lock_for_export` copy, moved to CPU)."""
    check_example_input(example_input)
    check_scales(scales)
    simulation.cpu()
    lowering = Lowering(simulation, example_input.cpu(), dyadic=scales == "dyadic")
    return IntegerModel(lowering.run())


@dataclass(frozen=True)
class ExactnessReport:
    """How the integer model's outputs compare with the fake-quantized model's."""

    elements: int
    mismatches: int
    max_code_difference: int
    top1_agreement: float = 1.0

    @property
    def exact(self) -> bool:
        return self.mismatches == 0


def compare_with_simulation(
    simulation: nn.Module, integer_model: IntegerModel, x: Tensor
) -> ExactnessReport:
    """Run both models on ``x`` and count output codes that differ (zero tolerance).

    The simulation's output divided by ``2**output_exponent`` must be exactly the integer
    output; a non-integral quotient counts as a mismatch.
    """
    x = check_example_input(x, "the check batch").cpu()
    with torch.no_grad():
        reference = simulation.eval()(x).double() * 2.0 ** (-integer_model.output_exponent)
    got = integer_model.predict(x).double()
    diff = (reference - got).abs()
    agree = 1.0
    if got.dim() == 2 and len(got):
        agree = float((reference.argmax(1) == got.argmax(1)).double().mean())
    return ExactnessReport(
        elements=int(diff.numel()),
        mismatches=int((diff != 0).sum()),
        max_code_difference=int(torch.ceil(diff.max()).item()) if diff.numel() else 0,
        top1_agreement=agree,
    )


def check_against_simulation(
    simulation: nn.Module,
    integer_model: IntegerModel,
    batches: list[Tensor],
    scales: Scales,
    min_top1_agreement: float,
) -> float:
    """The share of ``batches``' predictions on which both models agree.

    Raises:
        ExportError: with ``power_of_two``, a batch whose outputs differ at all; with either,
            an agreement below ``min_top1_agreement``.
    """
    agree = total = 0.0
    for i, x in enumerate(batches):
        report = compare_with_simulation(simulation, integer_model, x)
        if scales == "power_of_two" and not report.exact:
            raise ExportError(
                f"check batch {i}: the integer model differs from the fake-quantized model in "
                f"{report.mismatches} of {report.elements} outputs (up to "
                f"{report.max_code_difference} codes); please report this with the model"
            )
        agree += report.top1_agreement * len(x)
        total += len(x)
    agreement = agree / total
    if agreement < min_top1_agreement:
        raise ExportError(
            f"the dyadic integer model agrees with the fake-quantized model on "
            f"{agreement:.1%} of {int(total)} check predictions, below "
            f"min_top1_agreement={min_top1_agreement}"
        )
    return agreement


def export_integer(
    model: nn.Module,
    example_input: Tensor,
    check: bool = True,
    scales: Scales = "power_of_two",
    min_top1_agreement: float = 0.99,
) -> IntegerModel:
    """The integer-only model of a fake-quantized ``model``.

    Batch norms that follow a quantized conv/linear are folded (see :func:`lock_for_export`);
    weights become integer codes; each quantized layer's input becomes
    ``sat(round_shift(acc, s_in - s_acc))``; residual adds align exponents by left shifts;
    average pooling's division is folded into the next requantization; the logits are
    integers with one exponent. Every value is bounded over the input range, and export
    fails if any could overflow int32 (``program.report`` lists the accumulator bits).

    With ``scales="power_of_two"`` (INT-SE, fixed point) the integer model is bit-exact and
    layers with other scales are refused. ``scales="dyadic"`` also takes uniform schemes
    with float steps (LSQ, clip): each accumulator is rescaled onto a fine power-of-two grid
    (the bias rounded onto it) and the next input requantized, by integer multipliers and
    right shifts (HAWQ-V3,
    https://arxiv.org/abs/2011.10680); power-of-two layers keep their exact form.

    Args:
        model: the fake-quantized model (not changed).
        example_input: a float batch, used to trace shapes and, with ``check``, to verify
            that the integer model's logits equal the fake-quantized model's exactly.
        check: run that check and raise if any output differs (``power_of_two``), or if
            fewer than ``min_top1_agreement`` of the example predictions agree (``dyadic``).
        scales: ``"power_of_two"`` (bit-exact) or ``"dyadic"``.
        min_top1_agreement: the dyadic check's threshold, in [0, 1].

    Raises:
        ExportError: a layer or operation has no integer form (the message names it and
            what is supported), an accumulator could overflow, or the check fails.

    Example:
        >>> integer_model = export_integer(quantized_model, images[:8])  # doctest: +SKIP
        >>> logits = integer_model(integer_model.quantize_input(images))  # doctest: +SKIP
    """
    check_scales(scales, min_top1_agreement)
    simulation = lock_for_export(model)
    integer_model = lower(simulation, example_input, scales)
    if check:
        check_against_simulation(
            simulation, integer_model, [example_input], scales, min_top1_agreement
        )
    return integer_model


__all__ = [
    "SCALES",
    "ExactnessReport",
    "ExportError",
    "check_against_simulation",
    "check_scales",
    "compare_with_simulation",
    "export_integer",
    "lock_for_export",
    "lower",
]
