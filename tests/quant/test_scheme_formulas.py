"""Each scheme against its formula in REFERENCES.md §1.1 / §2 / §4, on small hand-made tensors.

Expectations are computed here, in float64, from the written formula; the scheme runs in
float32. Where rounding could land on a half-integer boundary the parameters are checked
first and the quantization formula is then applied to the scheme's own parameters.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_autoq.quant import make_scheme, scheme_class

pytestmark = pytest.mark.usefixtures("single_thread")

# Tables of REFERENCES.md §1.1 (index 0 is 1 bit).
L_UL2Q = (1.5950, 0.9953, 0.5872, 0.3359, 0.1894, 0.1057, 0.0571, 0.0305)
L_CLIP = (1.0, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)
L_POW2 = (1.0, 0.9, 0.4, 0.03)

W = torch.tensor([0.31, -1.23, 0.052, 2.07, -0.71, 0.44, -0.09, 1.12, -2.6, 0.18])


def _estimate(name: str, bits: int, x: torch.Tensor, signed: bool = True, **options):
    scheme = make_scheme(name, bits, **options)
    dims = tuple(range(x.dim()))
    params = scheme.estimate(x, signed, dims)
    return scheme, params, scheme.quantize(x, params, signed)


def _pop_std(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return ((x - x.mean()) ** 2).mean().sqrt()


def _rc(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.clamp(torch.round(v), lo, hi)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual.double().reshape(expected.shape), expected, rtol=rtol, atol=1e-6
    )


def test_binary():
    _, params, q = _estimate("binary", 1, W)
    a = W.double().abs().mean()
    _close(params["scale"], a)
    _close(q, a * torch.sign(W.double()))


def test_binary_unsigned_documented_variant():
    x = torch.tensor([0.0, 0.2, 0.9, 1.4, 0.1, 3.0])
    _, params, q = _estimate("binary", 1, x, signed=False)
    a = 2 * x.double().mean()
    _close(params["scale"], a)
    _close(q, torch.where(x.double() >= a / 2, a, 0.0))


def test_ternary():
    _, params, q = _estimate("ternary", 2, W)
    w = W.double()
    d = 0.7 * w.abs().mean()
    t = torch.sign(w) * (w.abs() >= d)
    a = (t * w).sum() / t.abs().sum()
    _close(params["threshold"], d)
    _close(params["scale"], a)
    _close(q, a * t)
    assert 0 < t.abs().sum() < len(w)  # the threshold really zeroes some values


@pytest.mark.parametrize("bits", range(1, 9))
def test_ul2q(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(64, generator=g) * 1.5 + 0.7
    _, params, q = _estimate("ul2q", bits, x)
    w = x.double()
    beta = w.mean()
    a = L_UL2Q[bits - 1] * _pop_std(w)
    _close(params["offset"], beta)
    _close(params["scale"], a)
    a32, beta32 = params["scale"].double(), params["offset"].double()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    expected = a32 * (_rc((w - beta32) / a32 - 0.5, lo, hi) + 0.5) + beta32
    _close(q, expected)


@pytest.mark.parametrize("bits", range(1, 9))
def test_clip_signed(bits):
    g = torch.Generator().manual_seed(10 + bits)
    x = torch.randn(64, generator=g) * 0.8
    _, params, q = _estimate("clip", bits, x)
    a = L_CLIP[bits - 1] * _pop_std(x)
    _close(params["scale"], a)
    a32 = params["scale"].double()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    _close(q, a32 * (_rc(x.double() / a32 - 0.5, lo, hi) + 0.5))


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_clip_unsigned_documented_variant(bits):
    x = torch.rand(64, generator=torch.Generator().manual_seed(bits)) * 3
    _, params, q = _estimate("clip", bits, x, signed=False)
    _close(params["scale"], L_CLIP[bits - 1] * _pop_std(x))
    a32 = params["scale"].double()
    _close(q, a32 * _rc(x.double() / a32, 0, 2**bits - 1))


@pytest.mark.parametrize("bits", range(2, 9))
def test_fixed_point(bits):
    _, params, q = _estimate("fixed_point", bits, W)
    e = math.floor(math.log2(float(W.abs().max()))) - (bits - 2)
    assert params["exponent"].item() == e
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    _close(q, _rc(W.double() / 2.0**e, lo, hi) * 2.0**e, rtol=0)


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_fixed_point_unsigned_uses_the_sign_bit_for_magnitude(bits):
    x = W.abs()
    _, params, q = _estimate("fixed_point", bits, x, signed=False)
    e = math.floor(math.log2(float(x.max()))) - (bits - 1)
    assert params["exponent"].item() == e
    _close(q, _rc(x.double() / 2.0**e, 0, 2**bits - 1) * 2.0**e, rtol=0)


@pytest.mark.parametrize("bits", range(1, 9))
def test_zoom(bits):
    x = W * 3 + 1
    scheme, params, q = _estimate("zoom", bits, x)
    lo, hi = x.min().double(), x.max().double()
    step = (hi - lo) / (2**bits - 1)
    levels = scheme.levels(params, True).double().reshape(-1)
    assert levels.numel() == 2**bits
    _close(levels[0], lo)
    _close(levels[-1], hi)
    _close(levels.diff(), step.expand(levels.numel() - 1))
    _close(q, lo + step * _rc((x.double() - lo) / step, 0, 2**bits - 1))
    # The observed extremes are reproduced (both ends are levels).
    _close(q[x.argmin()], lo)
    _close(q[x.argmax()], hi)


@pytest.mark.parametrize("bits", range(1, 5))
def test_power_of_two(bits):
    g = torch.Generator().manual_seed(20 + bits)
    x = torch.randn(64, generator=g)
    scheme, params, q = _estimate("power_of_two", bits, x)
    a = L_POW2[bits - 1] * _pop_std(x)
    _close(params["scale"], a)
    a32 = params["scale"].double()
    w = x.double()
    top = 2 ** (bits - 1) - 1
    k = torch.clamp(torch.round(torch.log2((w / a32).abs())), 0, top)
    _close(q, a32 * torch.sign(w) * torch.exp2(k))
    powers = a32 * torch.exp2(torch.arange(top + 1, dtype=torch.float64))
    expected_levels = torch.cat([-powers, powers]).sort().values
    _close(scheme.levels(params, True).double().reshape(-1).sort().values, expected_levels)


@pytest.mark.parametrize("bits", range(1, 9))
def test_residual_binary_greedy(bits):
    _, params, q = _estimate("residual_binary", bits, W)
    w = W.double()
    r = torch.zeros_like(w)
    for i in range(bits):
        alpha = (w - r).abs().mean()
        _close(params[f"alpha{i}"], alpha)
        r = r + alpha * torch.where(w - r >= 0, 1.0, -1.0)
    _close(q, r)
    # More terms never increase the error of the greedy fit.
    if bits > 1:
        _, _, q_less = _estimate("residual_binary", bits - 1, W)
        assert ((q - W) ** 2).sum() <= ((q_less - W) ** 2).sum() + 1e-6


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_lsq(bits, signed):
    x = W if signed else W.abs()
    _, params, q = _estimate("lsq", bits, x, signed=signed)
    q_n, q_p = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    s = 2 * x.double().abs().mean() / math.sqrt(q_p)
    _close(params["scale"], s)
    s32 = params["scale"].double()
    _close(q, s32 * _rc(x.double() / s32, -q_n, q_p))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("candidates", [1, 2, 4])
def test_int_se_minimum_mse_exponent(bits, candidates):
    x = torch.cat([torch.linspace(-1, 1, 41), torch.tensor([6.0])])
    _, params, q = _estimate("int_se", bits, x, candidates=candidates)
    hi = 2 ** (bits - 1) - 1
    s0 = math.ceil(math.log2(6.0 / hi))
    w = x.double()

    def mse(s: int) -> float:
        return float(((w - _rc(w / 2.0**s, -hi - 1, hi) * 2.0**s) ** 2).mean())

    # Candidates s0 - candidates + 1 .. s0; ties go to the larger exponent.
    best = min(range(s0 - candidates + 1, s0 + 1), key=lambda s: (mse(s), -s))
    assert params["exponent"].item() == best
    _close(q, _rc(w / 2.0**best, -hi - 1, hi) * 2.0**best, rtol=0)


def test_paper_letters_in_order():
    from lightning_autoq import AUTOQNN_SCHEMES

    assert "".join(scheme_class(n).letter for n in AUTOQNN_SCHEMES) == "BTQFZCPR"


def test_scheme_bit_ranges_match_references():
    ranges = {n: scheme_class(n).bit_range for n in ("binary", "ternary", "power_of_two", "lsq")}
    assert ranges == {"binary": (1, 1), "ternary": (2, 2), "power_of_two": (1, 4), "lsq": (2, 8)}
