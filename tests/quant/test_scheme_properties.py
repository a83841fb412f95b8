"""Conformance properties of every registered scheme at every allowed bit-width.

Parametrized over the registry, so a newly registered scheme is checked the moment it exists:
outputs lie on the scheme's level set, quantizing twice changes nothing (where the scheme
claims it), the number of distinct outputs fits the bit-width, and degenerate inputs (zeros,
constants, 1e-30, 1e30) give finite values through the scheme and the ``Quantizer`` module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lightning_autoq import Quantizer, available_schemes
from lightning_autoq.quant import make_scheme, scheme_class
from lightning_autoq.quant.schemes.base import reduce_all_but

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEME_BITS = [
    pytest.param(name, bits, id=f"{name}-{bits}")
    for name in available_schemes()
    for bits in range(scheme_class(name).bit_range[0], scheme_class(name).bit_range[1] + 1)
]
IDEMPOTENT_BITS = [p for p in SCHEME_BITS if scheme_class(p.values[0]).idempotent]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Small 2-D float32 tensors (channels x values), magnitudes from 1e-3 to 1e4."""
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 12)))
    values = draw(
        hnp.arrays(
            np.float32,
            shape,
            elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
        )
    )
    return torch.from_numpy(values.copy())


axes = st.sampled_from([None, 0])  # per tensor, per channel (first dimension)


def _estimate(name: str, bits: int, x: torch.Tensor, signed: bool, axis: int | None):
    scheme = make_scheme(name, bits)
    return scheme, scheme.estimate(x, signed, reduce_all_but(x, axis))


def _per_group(t: torch.Tensor, axis: int | None) -> list[torch.Tensor]:
    """The tensor split into the groups that share parameters."""
    return [t.reshape(-1)] if axis is None else [c.reshape(-1) for c in t.unbind(axis)]


def _levels_per_group(levels: torch.Tensor, x: torch.Tensor, axis: int | None):
    """The level vector of each group, from levels shaped ``param_shape + (L,)``."""
    flat = levels.reshape(-1, levels.shape[-1])
    if axis is None:
        assert flat.shape[0] == 1
        return [flat[0]]
    assert flat.shape[0] == x.shape[axis]
    return list(flat)


@pytest.mark.parametrize(("name", "bits"), SCHEME_BITS)
@settings(max_examples=12)
@given(x=tensors(), signed=st.booleans(), axis=axes)
def test_outputs_lie_on_the_level_set(name, bits, x, signed, axis):
    scheme, params = _estimate(name, bits, x, signed, axis)
    q = scheme.quantize(x, params, signed)
    assert q.shape == x.shape
    assert torch.isfinite(q).all()
    levels = scheme.levels(params, signed)
    for qg, lv in zip(_per_group(q, axis), _levels_per_group(levels, x, axis), strict=True):
        atol = 1e-5 * lv.abs().max() + torch.finfo(torch.float32).tiny
        distance = (qg[:, None] - lv[None, :]).abs().amin(dim=1)
        assert (distance <= atol).all(), (qg[distance > atol], lv)


@pytest.mark.parametrize(("name", "bits"), IDEMPOTENT_BITS)
@settings(max_examples=12)
@given(x=tensors(), signed=st.booleans(), axis=axes)
def test_quantize_is_idempotent(name, bits, x, signed, axis):
    scheme, params = _estimate(name, bits, x, signed, axis)
    q = scheme.quantize(x, params, signed)
    assert torch.equal(scheme.quantize(q, params, signed), q)


@pytest.mark.parametrize(("name", "bits"), SCHEME_BITS)
@settings(max_examples=12)
@given(x=tensors(), signed=st.booleans(), axis=axes)
def test_distinct_outputs_bounded_by_level_count(name, bits, x, signed, axis):
    scheme, params = _estimate(name, bits, x, signed, axis)
    q = scheme.quantize(x, params, signed)
    levels = scheme.levels(params, signed)
    n_levels = levels.shape[-1]
    for qg in _per_group(q, axis):
        assert qg.unique().numel() <= n_levels


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(("name", "bits"), SCHEME_BITS)
def test_level_count_fits_the_bit_width(name, bits, signed):
    """A b-bit scheme has at most 2**b levels (ternary: 3, stored in 2 bits)."""
    scheme = make_scheme(name, bits)
    x = torch.linspace(-3.0, 5.0, 64).reshape(4, 16)
    params = scheme.estimate(x, signed, reduce_all_but(x, None))
    n_levels = scheme.levels(params, signed).shape[-1]
    bound = 3 if name == "ternary" else 2**bits
    assert n_levels <= bound
    # A generic input actually reaches more than one level.
    assert scheme.quantize(x, params, signed).unique().numel() > 1


def _special_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(3, 8, generator=g)
    return {
        "zeros": torch.zeros(3, 8),
        "constant": torch.full((3, 8), 2.5),
        "negative_constant": torch.full((3, 8), -0.75),
        "tiny": noise * 1e-30,
        "huge": noise * 1e30,
        "huge_constant": torch.full((3, 8), 1e30),
    }


def _quantizers(name: str, bits: int) -> list[Quantizer]:
    """Every (kind, range mode, granularity) this scheme allows."""
    cls = scheme_class(name)
    out: list[Quantizer] = []
    weight_modes = ["learned"] if cls.needs_learned else ["dynamic"]
    if cls.learnable and not cls.needs_learned:
        weight_modes.append("learned")
    for mode in weight_modes:
        out.append(Quantizer(name, bits, kind="weight", range_mode=mode))
        out.append(Quantizer(name, bits, kind="weight", range_mode=mode, channels=3))
    act_modes = ["learned"] if cls.needs_learned else ["running"]
    if cls.learnable and not cls.needs_learned:
        act_modes.append("learned")
    for mode in act_modes:
        for signed in (True, False, None):
            out.append(Quantizer(name, bits, kind="activation", range_mode=mode, signed=signed))
    return out


@pytest.mark.parametrize(("name", "bits"), SCHEME_BITS)
def test_degenerate_inputs_give_finite_outputs(name, bits):
    scheme = make_scheme(name, bits)
    for label, x in _special_tensors().items():
        for signed in (True, False):
            for axis in (None, 0):
                params = scheme.estimate(x, signed, reduce_all_but(x, axis))
                for pname, p in params.items():
                    assert torch.isfinite(p).all(), (label, signed, axis, pname)
                q = scheme.quantize(x, params, signed)
                assert torch.isfinite(q).all(), (label, signed, axis)
                assert torch.isfinite(scheme.levels(params, signed)).all(), (label, signed)


@pytest.mark.parametrize(("name", "bits"), SCHEME_BITS)
def test_degenerate_inputs_through_quantizer_are_finite(name, bits):
    for label, x in _special_tensors().items():
        for quantizer in _quantizers(name, bits):
            for training in (True, False):
                quantizer.train(training)
                xg = x.clone().requires_grad_(True)
                y = quantizer(xg)
                assert torch.isfinite(y).all(), (label, quantizer, training)
                (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
                assert torch.isfinite(xg.grad).all(), (label, quantizer)
                for pname, p in quantizer.named_parameters():
                    assert p.grad is None or torch.isfinite(p.grad).all(), (label, pname)
                    p.grad = None
