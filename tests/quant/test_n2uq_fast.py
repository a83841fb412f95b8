"""N2UQ's few-pass path (one set of intervals) against the interval-by-interval formula."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.schemes import n2uq

pytestmark = pytest.mark.usefixtures("single_thread")


def run(quantizer: Quantizer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and every parameter's gradient for a fixed upstream gradient."""
    quantizer.zero_grad()
    x = x.clone().requires_grad_(True)
    y = quantizer(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    grads = [p.grad.clone() for _, p in sorted(quantizer.named_parameters())]
    return (y.detach(), x.grad.clone(), *grads)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_the_fast_path_gives_the_same_values_and_gradients(bits: int, signed: bool) -> None:
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(6, 3, 10, 10, generator=g)
    x = x if signed else x.relu()
    quantizer = Quantizer("n2uq", bits=bits, kind="activation")
    quantizer(x)  # initialises the range and equal intervals
    with torch.no_grad():  # unequal learned intervals
        for i in range(n2uq.PARTS):
            getattr(quantizer, f"part{i}").mul_(0.5 + torch.rand((), generator=g))
        # inputs exactly on a threshold and on an interval start
        c = quantizer.scheme.intervals(dict(quantizer.named_parameters()))
        edge = float(c[0] / 2 * quantizer.scale.abs())
        x.view(-1)[:4] = torch.tensor([0.0, edge, float(c[0] * quantizer.scale.abs()), 1e6])
    fast = run(quantizer, x)
    with mock.patch.object(n2uq, "_codes_and_ramp_scalar", n2uq._codes_and_ramp):
        reference = run(quantizer, x)
    assert torch.equal(fast[0], reference[0])  # the same codes
    assert torch.equal(fast[1], reference[1])  # the same input gradient
    for got, expected in zip(fast[2:], reference[2:], strict=True):
        # the parameter gradients are the same sums, accumulated in another order
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)
    assert any(bool(grad.abs().sum() > 0) for grad in fast[2:])


def test_per_channel_parameters_take_the_interval_by_interval_path() -> None:
    quantizer = Quantizer("n2uq", bits=3, kind="weight", channels=4)
    w = torch.randn(4, 3, 3, 3)
    with mock.patch.object(n2uq, "_codes_and_ramp_scalar", side_effect=AssertionError):
        y = quantizer(w)
    assert y.shape == w.shape
