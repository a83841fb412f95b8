"""The few-pass binary, ternary, residual-binary and power-of-two schemes against references.

The references below are the straightforward formulas (the schemes' earlier code, one
operation per symbol, differentiated by autograd). The schemes must give exactly the same
parameters and quantized values, and through a :class:`Quantizer` exactly the same outputs
and gradients (input and learned scale), on random tensors with zeros, exact threshold ties
and one-sided data.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from unittest import mock

import pytest
import torch
from torch import Tensor

from lightning_autoq.quant import Quantizer, make_scheme
from lightning_autoq.quant import quantizer as quantizer_module
from lightning_autoq.quant.functional import TINY, above_zero, abs_mean, attach_gradient, std
from lightning_autoq.quant.schemes.base import Params, Scheme
from lightning_autoq.quant.schemes.binary import Binary, ResidualBinary, Ternary
from lightning_autoq.quant.schemes.gaussian import CLIP_FACTORS
from lightning_autoq.quant.schemes.power_of_two import POW2_FACTORS, PowerOfTwo, rounding_points

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------- reference formulas


def _nonneg(x: Tensor, signed: bool) -> Tensor:
    return x if signed else x.clamp_min(0.0)


def _sign_no_zero(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _ref_abs_mean(x: Tensor, dims: Sequence[int]) -> Tensor:
    m = x.abs().amax(dim=tuple(dims), keepdim=True).clamp_min(TINY)
    return (x.abs() / m).mean(dim=tuple(dims), keepdim=True) * m


def _ref_std(x: Tensor, dims: Sequence[int]) -> Tensor:
    m = x.abs().amax(dim=tuple(dims), keepdim=True).clamp_min(TINY)
    return (x / m).std(dim=tuple(dims), keepdim=True, correction=0) * m


class RefBinary(Binary):
    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        a = _ref_abs_mean(_nonneg(x, signed), dims)
        return {"scale": a if signed else 2 * a}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        a = params["scale"]
        if signed:
            return a * _sign_no_zero(x)
        return a * (x >= a / 2).to(x.dtype)


def _ref_ternary_codes(x: Tensor, threshold: Tensor) -> Tensor:
    return torch.sign(x) * (x.abs() >= threshold).to(x.dtype)


class RefTernary(Ternary):
    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = _nonneg(x, signed)
        d = self.threshold_ratio * _ref_abs_mean(x, dims)
        t = _ref_ternary_codes(x, d)
        count = t.abs().sum(dim=tuple(dims), keepdim=True).clamp_min(1.0)
        a = (t * x).sum(dim=tuple(dims), keepdim=True) / count
        return {"threshold": d, "scale": a}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        return params["scale"] * _ref_ternary_codes(_nonneg(x, signed), params["threshold"])


class RefResidualBinary(ResidualBinary):
    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = _nonneg(x, signed)
        offset = x.mean(dim=tuple(dims), keepdim=True)
        params: Params = {"offset": torch.zeros_like(offset) if signed else offset}
        r = params["offset"].expand_as(x)
        for name in self._alphas():
            a = _ref_abs_mean(x - r, dims)
            params[name] = a
            r = r + a * _sign_no_zero(x - r)
        return params

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        x = _nonneg(x, signed)
        r = params["offset"].expand_as(x)
        for name in self._alphas():
            r = r + params[name] * _sign_no_zero(x - r)
        return r


class RefPowerOfTwo(PowerOfTwo):
    def estimate(self, x: Tensor, signed: bool, dims: Sequence[int]) -> Params:
        x = x if signed else x.clamp_min(0.0)
        return {"scale": (POW2_FACTORS[self.bits - 1] * _ref_std(x, dims)).clamp_min(TINY)}

    def quantize(self, x: Tensor, params: Params, signed: bool) -> Tensor:
        x = x if signed else x.clamp_min(0.0)
        a = params["scale"]
        k = torch.clamp(torch.round(torch.log2((x / a).detach().abs())), 0, self._top())
        sign = torch.where(x >= 0, 1.0, -1.0) if signed else torch.sign(x)
        return a * sign.to(x.dtype) * torch.exp2(k)


REFERENCES: dict[str, type[Scheme]] = {
    "binary": RefBinary,
    "ternary": RefTernary,
    "residual_binary": RefResidualBinary,
    "power_of_two": RefPowerOfTwo,
}
CASES = [
    ("binary", 1),
    ("ternary", 2),
    ("residual_binary", 1),
    ("residual_binary", 2),
    ("residual_binary", 3),
    ("power_of_two", 1),
    ("power_of_two", 2),
    ("power_of_two", 3),
    ("power_of_two", 4),
]


def _assert_identical(actual: Tensor, expected: Tensor) -> None:
    """Same shape, dtype and values, bit for bit (the sign of a zero aside), NaN at NaN."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {same.numel()} values differ"


def _inputs(shape: tuple[int, ...], seed: int) -> Tensor:
    """Gaussian values with exact zeros, a signed zero and repeated values (ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.7 + 0.1
    flat = x.view(-1)
    if flat.numel() >= 20:
        flat[:: flat.numel() // 10] = 0.0
        flat[1] = -0.0
        flat[-4:] = flat[5]  # ties with each other
    return x


# ------------------------------------------------------------- scheme-level equality


@pytest.mark.parametrize(("name", "bits"), CASES)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_estimate_and_quantize_are_bit_identical(name, bits, signed, per_channel):
    fast, ref = make_scheme(name, bits), REFERENCES[name](bits)
    for seed, shape in enumerate([(6, 5, 3, 3), (8, 4, 7, 7), (3, 1, 1, 1), (2, 37)]):
        x = _inputs(shape, seed)
        dims = tuple(range(1, x.dim())) if per_channel else tuple(range(x.dim()))
        params = fast.estimate(x, signed, dims)
        expected = ref.estimate(x, signed, dims)
        assert list(params) == list(expected) == list(fast.param_names())
        for key in expected:
            _assert_identical(params[key], expected[key])
        _assert_identical(fast.quantize(x, params, signed), ref.quantize(x, expected, signed))


@pytest.mark.parametrize(("name", "bits"), CASES)
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_ties_and_degenerate_parameters(name, bits, signed):
    """Inputs exactly on the decision points: zero, +-a, the thresholds, the greedy sums."""
    fast, ref = make_scheme(name, bits), REFERENCES[name](bits)
    x = _inputs((4, 50), 7)
    params = {k: v.reshape(()) for k, v in ref.estimate(x, signed, (0, 1)).items()}
    decisions = [p.reshape(-1) for p in params.values()]
    decisions += [p.reshape(-1) / 2 for p in params.values()]  # binary's a / 2
    if name == "residual_binary":  # every partial greedy sum offset + sum(+-a_i)
        alphas = [params[n].reshape(()) for n in fast.param_names()[1:]]
        for signs in itertools.product((-1.0, 1.0), repeat=len(alphas)):
            for depth in range(len(alphas) + 1):
                partial = params["offset"].reshape(())
                for s, a in zip(signs[:depth], alphas[:depth], strict=True):
                    partial = partial + s * a
                decisions.append(partial.reshape(1))
    if name == "power_of_two":  # a 2^j and the rounding points a 2^(j +- 1/2)
        a = params["scale"].reshape(())
        decisions += [a * 2.0 ** (j / 2) for j in range(-2, 2 * fast._top() + 3)]
    points = torch.cat([d.reshape(-1) for d in decisions])
    grid = torch.cat([points, -points, torch.tensor([0.0, -0.0])])
    grid = torch.cat([grid, torch.nextafter(grid, grid + 1), torch.nextafter(grid, grid - 1)])
    _assert_identical(fast.quantize(grid, params, signed), ref.quantize(grid, params, signed))
    # Degenerate parameters: zero and negative scales/thresholds, an all-zero tensor.
    for factor in (0.0, -1.0):
        odd = {k: v * factor for k, v in params.items()}
        _assert_identical(fast.quantize(grid, odd, signed), ref.quantize(grid, odd, signed))
    zeros = torch.zeros(3, 8)
    zero_params = fast.estimate(zeros, signed, (0, 1))
    expected = ref.estimate(zeros, signed, (0, 1))
    for key in expected:
        _assert_identical(zero_params[key], expected[key])
    _assert_identical(
        fast.quantize(zeros, zero_params, signed), ref.quantize(zeros, expected, signed)
    )


@pytest.mark.parametrize(("name", "bits"), CASES)
@pytest.mark.parametrize("signed", [True, False])
def test_non_finite_inputs_match_reference(name, bits, signed):
    """NaN and infinities give the same parameters and values (NaN where the formula has)."""
    fast, ref = make_scheme(name, bits), REFERENCES[name](bits)
    x = _inputs((4, 30), 11)
    x[0, 3], x[1, 7], x[1, 9], x[2, 0] = float("nan"), float("inf"), float("-inf"), float("inf")
    params, expected = fast.estimate(x, signed, (1,)), ref.estimate(x, signed, (1,))
    for key in expected:
        _assert_identical(params[key], expected[key])
    _assert_identical(fast.quantize(x, params, signed), ref.quantize(x, expected, signed))
    finite = ref.estimate(x.nan_to_num(0.0, 0.0, 0.0), signed, (1,))
    _assert_identical(fast.quantize(x, finite, signed), ref.quantize(x, finite, signed))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_power_of_two_thresholds_reproduce_log2(bits):
    """2^k counted by thresholds equals exp2(clip(round(log2 u))) on a dense sweep of u."""
    scheme = PowerOfTwo(bits)
    top = scheme._top()
    if top and rounding_points(top, torch.device("cpu"), torch.float32) is None:
        pytest.skip("this CPU's log2 has no exact thresholds: the logarithm is used")
    g = torch.Generator().manual_seed(bits)
    sweep = [torch.exp2(torch.rand(100_000, generator=g) * 80 - 40)]
    for j in range(0, top + 2):  # every float within 3000 of each 2^(j - 1/2)
        centre = torch.tensor([2.0 ** (j - 0.5)]).view(torch.int32)
        steps = torch.arange(-3000, 3001, dtype=torch.int32)
        sweep.append((centre + steps).view(torch.float32))
    special = [0.0, 2.0**-149, 2.0**-126, float("inf"), float("nan"), 3.0e38]
    u = torch.cat([*sweep, torch.tensor(special)])
    expected = torch.exp2(torch.clamp(torch.round(torch.log2(u)), 0, top))
    _assert_identical(scheme._powers(u.clone()), expected)
    with torch.no_grad():  # and on several threads (other chunk boundaries)
        torch.set_num_threads(2)
        _assert_identical(scheme._powers(u.clone()), expected)


def test_power_of_two_other_dtypes_take_the_logarithm():
    assert rounding_points(3, torch.device("cpu"), torch.float64) is None
    x = _inputs((6, 40), 9).double()
    fast, ref = PowerOfTwo(3), RefPowerOfTwo(3)
    params = ref.estimate(x, True, (1,))
    _assert_identical(fast.quantize(x, params, True), ref.quantize(x, params, True))


# -------------------------------------------------------- through the quantizer module


def _pair(name: str, bits: int, **kwargs) -> tuple[Quantizer, Quantizer]:
    fast = Quantizer(name, bits, **kwargs)
    ref = copy.deepcopy(fast)
    ref.scheme = REFERENCES[name](bits)
    return fast, ref


def _check_steps(fast: Quantizer, ref: Quantizer, shape: tuple[int, ...], steps: int = 3) -> None:
    """Forward + backward on the same inputs: outputs, input and parameter gradients equal."""
    for step in range(steps):
        x = _inputs(shape, 100 + step) * (1.0 + step)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(step))
        results = []
        for q in (fast, ref):
            xi = x.clone().requires_grad_(True)
            q.zero_grad()
            # the reference quantizer attaches the gradient with the plain chain
            chain = _ref_attach_gradient if q is ref else attach_gradient
            with mock.patch.object(quantizer_module, "attach_gradient", chain):
                out = q(xi)
            out.backward(grad)
            learned = {n: p.grad.clone() for n, p in q.named_parameters()}
            results.append((out.detach(), xi.grad, learned, dict(q.named_buffers())))
        (out_f, gx_f, gp_f, buf_f), (out_r, gx_r, gp_r, buf_r) = results
        _assert_identical(out_f, out_r)
        _assert_identical(gx_f, gx_r)
        assert gp_f.keys() == gp_r.keys()
        for key in gp_r:
            _assert_identical(gp_f[key], gp_r[key])
        for key in buf_r:
            _assert_identical(buf_f[key], buf_r[key])


@pytest.mark.parametrize(("name", "bits"), CASES)
@pytest.mark.parametrize("backward", ["ste", "clipped"])
def test_weight_quantizer_matches_reference(name, bits, backward):
    fast, ref = _pair(name, bits, kind="weight", channels=6, backward=backward, grad_ratio=0.5)
    _check_steps(fast, ref, (6, 4, 3, 3))


@pytest.mark.parametrize(("name", "bits"), CASES)
@pytest.mark.parametrize("signed", [None, True])
def test_activation_quantizer_matches_reference(name, bits, signed):
    """Running parameters (an EMA over batches) and unsigned inputs decided from the data."""
    fast, ref = _pair(name, bits, kind="activation", signed=signed)
    shape = (4, 3, 8, 8)
    if signed is None:  # post-ReLU activations: unsigned
        first = torch.rand(shape)
        for q in (fast, ref):
            q(first)
            assert not q.signed()
    _check_steps(fast, ref, shape)


@pytest.mark.parametrize(("name", "bits"), CASES)
def test_large_activation_matches_reference(name, bits):
    """A batch of 2^16 values: attach_gradient's one-node form, on post-ReLU data."""
    fast, ref = _pair(name, bits, kind="activation", signed=None)
    shape = (8, 8, 32, 32)
    first = torch.rand(shape)
    for q in (fast, ref):
        q(first)
    _check_steps(fast, ref, shape, steps=2)


@pytest.mark.parametrize(
    ("name", "bits"), [c for c in CASES if REFERENCES[c[0]].learnable and c[1] <= 2]
)
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_learned_scale_gradient_matches_reference(name, bits, kind):
    """A learned scale: its gradient is that of the plain product ``a * code``."""
    channels = 6 if kind == "weight" else None
    fast, ref = _pair(name, bits, kind=kind, channels=channels, range_mode="learned")
    _check_steps(fast, ref, (6, 4, 3, 3), steps=4)
    assert fast.scale.grad is not None and bool((fast.scale.grad != 0).any())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_clip_estimate_matches_reference(bits, per_channel):
    """Clip shares one max|x| between its standard deviation and its step floor."""
    x = _inputs((6, 5, 3, 3), bits)
    x[2] = 0.0  # a constant channel: the step floor wins there
    dims = (1, 2, 3) if per_channel else (0, 1, 2, 3)
    a = CLIP_FACTORS[bits - 1] * _ref_std(x, dims)
    floor = (x.abs().amax(dim=dims, keepdim=True) * 2.0**-20).clamp_min(TINY)
    expected = torch.maximum(a, floor)
    _assert_identical(make_scheme("clip", bits).estimate(x, True, dims)["scale"], expected)


def _ref_attach_gradient(x, q, mode="ste", ratio=1.0, lo=None, hi=None):
    surrogate = x - x.detach()
    if mode == "clipped":
        surrogate = surrogate * ((x >= lo) & (x <= hi))
    if ratio != 1.0:
        surrogate = surrogate * ratio
    return q + surrogate


@pytest.mark.parametrize("mode", ["ste", "clipped"])
@pytest.mark.parametrize("ratio", [1.0, 0.3])
@pytest.mark.parametrize("q_grad", [False, True])
@pytest.mark.parametrize("width", [40, 14_000])  # below and above the one-node size
def test_attach_gradient_matches_the_chain(mode, ratio, q_grad, width):
    """attach_gradient: the chain's value (NaN at non-finite x) and gradients, bit for bit."""
    x0 = _inputs((5, width), 5) * 2
    x0[0, 3], x0[1, 4], x0[2, 5] = float("inf"), float("-inf"), float("nan")
    lo, hi = torch.tensor(-1.0), torch.tensor(1.5)
    scale0 = torch.tensor([0.5, 1.0, 2.0, 0.25, 3.0]).unsqueeze(1)
    grad = torch.randn(5, width)
    results = []
    for fn in (attach_gradient, _ref_attach_gradient):
        x = x0.clone().requires_grad_(True)
        scale = scale0.clone().requires_grad_(q_grad)
        q = torch.round(x.detach() / scale) * scale
        out = fn(x, q, mode, ratio, lo, hi)
        out.backward(grad)
        results.append((out.detach(), x.grad, scale.grad))
    (out, gx, gs), (ref_out, ref_gx, ref_gs) = results
    _assert_identical(out, ref_out)
    _assert_identical(gx, ref_gx)
    assert (gs is None) == (ref_gs is None)
    if gs is not None:
        _assert_identical(gs, ref_gs)
    assert bool(out.isnan().any()) and bool((gx == 0).any()) == (mode == "clipped")


def test_helpers_match_their_definitions():
    x = _inputs((5, 9, 4), 3) * 1e30
    for dims in [(0, 1, 2), (1, 2), (0,)]:
        _assert_identical(abs_mean(x, dims), _ref_abs_mean(x, dims))
        _assert_identical(std(x, dims), _ref_std(x, dims))
    t = torch.tensor([-1.0, 0.0, 2.0**-149, 1.0])
    v = torch.tensor([-2.0, -0.0, 0.0, 2.0**-149, 2.0**-148, 1.0, 3.0])
    for threshold in t:
        assert torch.equal(v >= above_zero(threshold), (v >= threshold) & (v != 0))
