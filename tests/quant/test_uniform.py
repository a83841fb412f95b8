"""The fused uniform fake-quant node against the plain chain of STE primitives."""

from __future__ import annotations

import pytest
import torch

from lightning_autoq.quant.functional import round_clip_ste
from lightning_autoq.quant.uniform import UniformGrid, uniform_fake_quant


def _reference(x, step, offset, shift, lo, hi):
    """The same grid written as autograd records it, term by term."""
    centred = x if offset is None else x - offset
    codes = round_clip_ste(centred / step - shift, lo, hi) + shift
    q = codes * step
    return q if offset is None else q + offset


@pytest.mark.parametrize("shift", [0.0, 0.5])
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_value_and_gradients_match_the_reference_chain(shift, with_offset, per_channel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, generator=g) * 2
    shape = (4, 1, 1) if per_channel else ()
    step = (torch.rand(shape, generator=g) * 0.4 + 0.2).requires_grad_()
    offset = (torch.randn(shape, generator=g) * 0.3).requires_grad_() if with_offset else None
    lo, hi = -4, 3
    upstream = torch.randn(x.shape, generator=g)

    xf = x.clone().requires_grad_()
    q = uniform_fake_quant(xf, UniformGrid(step, lo, hi, offset, shift))
    grads = torch.autograd.grad(
        (q * upstream).sum(), [xf, step, *([offset] if offset is not None else [])]
    )

    xr = x.clone().requires_grad_()
    q_ref = _reference(xr, step, offset, shift, lo, hi)
    ref = torch.autograd.grad(
        (q_ref * upstream).sum(), [xr, step, *([offset] if offset is not None else [])]
    )

    assert torch.equal(q, q_ref)
    for got, expected in zip(grads, ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Some inputs really are clipped, so the masked gradients are exercised.
    assert (grads[0] == 0).any() and (grads[0] != 0).any()


def test_ste_mode_and_ratio():
    x = torch.linspace(-5, 5, 41, requires_grad=True)
    grid = UniformGrid(torch.tensor(0.5), -2, 1)
    (gx,) = torch.autograd.grad(uniform_fake_quant(x, grid, clipped=False, ratio=0.25).sum(), x)
    assert torch.equal(gx, torch.full_like(x, 0.25))
    (gx,) = torch.autograd.grad(uniform_fake_quant(x, grid, clipped=True).sum(), x)
    inside = (x / 0.5 >= -2) & (x / 0.5 <= 1)
    assert torch.equal(gx, inside.float())


def test_levels_are_the_values_quantize_returns():
    grid = UniformGrid(torch.tensor(0.3), -4, 3, torch.tensor(0.1), shift=0.5)
    levels = grid.levels()
    assert levels.numel() == 8
    q = uniform_fake_quant(levels, grid)
    assert torch.equal(q, levels)  # on-grid values come back bit-identical
