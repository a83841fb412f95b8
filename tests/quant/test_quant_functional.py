"""Functional primitives: INT-SE shared exponent search, surrogate gradients, gradient scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lightning_autoq.quant.functional import (
    attach_gradient,
    grad_scale,
    round_clip_ste,
    shared_exponent,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _code_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _mse(x: torch.Tensor, s: torch.Tensor, bits: int, signed: bool, dims) -> torch.Tensor:
    """``mean((x - clip(round(x / 2^s)) 2^s)^2)``: IOIQ's criterion, written out."""
    lo, hi = _code_range(bits, signed)
    step = torch.exp2(s)
    q = torch.clamp(torch.round(x / step), lo, hi) * step
    return ((x - q) ** 2).mean(dim=dims, keepdim=True)


def _max_based(x: torch.Tensor, bits: int, signed: bool, dims) -> torch.Tensor:
    _, hi = _code_range(bits, signed)
    top = x.abs().amax(dim=dims, keepdim=True)
    return torch.ceil(torch.log2(top / hi))


@st.composite
def nonzero_arrays(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.tuples(st.integers(1, 3), st.integers(2, 24)))
    values = draw(
        hnp.arrays(
            np.float32, shape, elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
        )
    )
    x = torch.from_numpy(values.copy())
    x[:, 0] = x[:, 0].abs() + 1e-3  # every row has a non-zero maximum
    return x


@settings(max_examples=60)
@given(
    x=nonzero_arrays(),
    bits=st.integers(2, 8),
    signed=st.booleans(),
    candidates=st.integers(1, 5),
    per_channel=st.booleans(),
)
def test_shared_exponent_mse_never_worse_than_max_based(x, bits, signed, candidates, per_channel):
    dims = (1,) if per_channel else (0, 1)
    s = shared_exponent(x, bits, signed, dims, candidates)
    s0 = _max_based(x, bits, signed, dims)
    assert s.shape == s0.shape
    assert torch.equal(s, torch.round(s))  # integer-valued
    assert (s <= s0).all() and (s >= s0 - candidates + 1).all()
    assert (_mse(x, s, bits, signed, dims) <= _mse(x, s0, bits, signed, dims)).all()


@settings(max_examples=30)
@given(x=nonzero_arrays(), bits=st.integers(2, 8), signed=st.booleans())
def test_shared_exponent_is_the_best_candidate(x, bits, signed):
    dims = (0, 1)
    s = shared_exponent(x, bits, signed, dims, candidates=4)
    s0 = _max_based(x, bits, signed, dims)
    errors = [_mse(x, s0 - k, bits, signed, dims) for k in range(4)]
    assert _mse(x, s, bits, signed, dims) <= min(errors)


def test_shared_exponent_strictly_better_with_outliers():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1000, generator=g) * 2 - 1
    x[:2] = torch.tensor([5.0, -5.0])  # two outliers at five times the bulk
    bits, signed, dims = 4, True, (0,)
    s = shared_exponent(x, bits, signed, dims, candidates=4)
    s0 = _max_based(x, bits, signed, dims)
    assert s.item() < s0.item()
    assert _mse(x, s, bits, signed, dims).item() < _mse(x, s0, bits, signed, dims).item()


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("top", [0.013, 1.0, 3.7, 127.0, 1000.0, 7e-20])
def test_single_candidate_is_max_based_exponent(bits, signed, top):
    x = torch.tensor([top * 0.25, -top * 0.5, top, 0.0])
    if not signed:
        x = x.abs()
    hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    expected = math.ceil(math.log2(float(torch.tensor(top)) / hi))
    s = shared_exponent(x, bits, signed, (0,), candidates=1)
    assert s.item() == expected
    # Nothing clips at the max-based exponent.
    assert float(x.abs().max()) / 2.0**expected <= hi


def test_shared_exponent_per_channel_and_invalid():
    x = torch.stack([torch.linspace(-1, 1, 9), torch.linspace(-100, 100, 9)])
    s = shared_exponent(x, 8, True, (1,), candidates=1)
    assert s.shape == (2, 1)
    assert s[0].item() == math.ceil(math.log2(1 / 127))
    assert s[1].item() == math.ceil(math.log2(100 / 127))
    with pytest.raises(ValueError, match="candidates=0"):
        shared_exponent(x, 8, True, (1,), candidates=0)


@settings(max_examples=40)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 16), elements=st.floats(-1e6, 1e6, width=32)),
    mode=st.sampled_from(["ste", "clipped"]),
    ratio=st.sampled_from([1.0, 0.5, 3.0, 1e-3]),
)
def test_attach_gradient_forward_is_exactly_q(values, mode, ratio):
    x = torch.from_numpy(values.copy()).requires_grad_(True)
    q = torch.round(x.detach() * 0.37) / 0.37 + 0.1  # any tensor computed from x.detach()
    lo, hi = (torch.tensor(-10.0), torch.tensor(10.0)) if mode == "clipped" else (None, None)
    y = attach_gradient(x, q, mode, ratio, lo, hi)
    assert torch.equal(y, q)


def test_attach_gradient_backward():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    q = torch.round(x.detach())
    g = torch.arange(1.0, 7.0)
    attach_gradient(x, q, "ste", 0.5).backward(g)
    assert torch.equal(x.grad, 0.5 * g)
    x.grad = None
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    attach_gradient(x, q, "clipped", 2.0, lo, hi).backward(g)
    inside = torch.tensor([0.0, 1, 1, 1, 1, 0])
    assert torch.equal(x.grad, 2.0 * g * inside)
    with pytest.raises(ValueError, match="lo, hi"):
        attach_gradient(x, q, "clipped")
    with pytest.raises(ValueError, match="'nope'"):
        attach_gradient(x, q, "nope")  # type: ignore[arg-type]


@settings(max_examples=40)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 16), elements=st.floats(-1e6, 1e6, width=32)),
    scale=st.floats(1e-4, 10.0),
)
def test_grad_scale_is_identity_forward_and_scales_gradient(values, scale):
    x = torch.from_numpy(values.copy()).requires_grad_(True)
    y = grad_scale(x, scale)
    assert torch.equal(y, x.detach())
    g = torch.linspace(-2, 3, x.numel())
    y.backward(g)
    torch.testing.assert_close(x.grad, g * scale, rtol=1e-6, atol=0)


def test_round_clip_ste_gradient_one_inside_zero_outside():
    lo, hi = -4, 3
    x = torch.tensor([-9.7, -4.4, -4.0, -2.6, -0.2, 0.3, 1.5, 2.9, 3.0, 3.2, 7.1, 1e30])
    x.requires_grad_(True)
    y = round_clip_ste(x, lo, hi)
    expected = torch.clamp(torch.round(x.detach()), lo, hi)
    assert torch.equal(y, expected)
    y.backward(torch.ones_like(x))
    # At the bounds themselves the input counts as clipped (LSQ: v >= Q_P gives Q_P).
    inside = ((x.detach() > lo) & (x.detach() < hi)).float()
    assert torch.equal(x.grad, inside)
    assert inside.sum() > 0 and (1 - inside).sum() > 0


def test_round_clip_ste_handles_overflowed_input():
    x = torch.tensor([float("inf"), float("-inf"), 2.0])
    assert torch.equal(round_clip_ste(x, 0, 7), torch.tensor([7.0, 0.0, 2.0]))
