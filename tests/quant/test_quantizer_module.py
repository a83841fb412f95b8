"""The ``Quantizer`` module: surrogate gradients, running and learned parameters, state, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_autoq import Quantizer, available_schemes
from lightning_autoq.quant import make_scheme, scheme_class
from lightning_autoq.quant.schemes.base import reduce_all_but

pytestmark = pytest.mark.usefixtures("single_thread")


def _bits(name: str) -> int:
    """A bit-width the scheme allows, preferring a multi-level one (3 bits)."""
    lo, hi = scheme_class(name).bit_range
    return min(max(3, lo), hi)


def _weight_mode(name: str) -> str:
    return "learned" if scheme_class(name).needs_learned else "dynamic"


def _act_mode(name: str) -> str:
    return "learned" if scheme_class(name).needs_learned else "running"


def _dynamic_weights(name: str) -> dict:
    """``range_mode="dynamic"`` for schemes whose weights default to running parameters."""
    return {"range_mode": "dynamic"} if scheme_class(name).running_weights else {}


ALL = available_schemes()
LEARNABLE = [n for n in ALL if scheme_class(n).learnable]
NOT_LEARNABLE = [n for n in ALL if not scheme_class(n).learnable]
DIFFERENTIABLE = [n for n in ALL if scheme_class(n).differentiable_input]
RUNNING_WEIGHTS = [n for n in ALL if scheme_class(n).running_weights]


def _upstream(shape: torch.Size) -> torch.Tensor:
    """A non-constant upstream gradient, so a wrong factor cannot hide behind ones."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(shape, generator=g) + 0.5


# --------------------------------------------------------------------------------------------
# Surrogate gradient to the input


def _check_clipped(q: Quantizer, x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Backpropagate through ``q`` and compare with ``ratio * g`` inside the level range."""
    params = {n: p.detach() for n, p in q.parameters_for(x).items()}
    lo, hi = q.scheme.bounds(params, q.signed())
    x = x.clone().requires_grad_(True)
    g = _upstream(x.shape)
    q(x).backward(g)
    inside = (x.detach() >= lo) & (x.detach() <= hi)
    assert torch.equal(x.grad, torch.where(inside, g * ratio, torch.zeros_like(g)))
    assert inside.any()
    return inside


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_clipped_backward_weight_dynamic(name, ratio):
    bits = _bits(name)
    q = Quantizer(
        name, bits, kind="weight", backward="clipped", grad_ratio=ratio, **_dynamic_weights(name)
    )
    x = torch.randn(4, 32) * 2.0
    x[0, 0], x[0, 1] = 50.0, -50.0
    _check_clipped(q, x, ratio)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_clipped_backward_is_zero_outside_stored_range(name, ratio):
    bits = _bits(name)
    q = Quantizer(name, bits, kind="activation", signed=True, backward="clipped", grad_ratio=ratio)
    q(torch.randn(4, 32))  # initialises the running or learned range
    q.eval()
    x = torch.randn(4, 32) * 4.0
    x[0, 0], x[0, 1] = 50.0, -50.0  # beyond every level of every scheme
    inside = _check_clipped(q, x, ratio)
    assert (~inside).any()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_ste_backward_is_ratio_everywhere(name, ratio):
    q = Quantizer(name, _bits(name), kind="weight", backward="ste", grad_ratio=ratio)
    x = (torch.randn(4, 32) * 2.0).requires_grad_(True)
    x.data[0, 0] = 50.0
    g = _upstream(x.shape)
    q(x).backward(g)
    assert torch.equal(x.grad, g * ratio)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_forward_value_independent_of_backward_and_grad_ratio(name, kind):
    x = torch.randn(3, 5, 4)
    outputs = []
    for backward in (None, "ste", "clipped"):  # None: "scheme" for differentiable_input
        for ratio in (1.0, 0.3, 2.0):
            q = Quantizer(name, _bits(name), kind=kind, backward=backward, grad_ratio=ratio)
            outputs.append(q(x.clone().requires_grad_(True)).detach())
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])


def test_output_keeps_input_dtype_and_shape():
    q = Quantizer("clip", 4, kind="weight")
    x = torch.randn(6, 3, dtype=torch.float64)
    y = q(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert q(None) is None


# --------------------------------------------------------------------------------------------
# Running statistics


def _stored(q: Quantizer) -> dict[str, torch.Tensor]:
    return {n: getattr(q, n).detach().clone() for n in q.scheme.param_names() if hasattr(q, n)}


@pytest.mark.parametrize("name", [n for n in ALL if not scheme_class(n).needs_learned])
def test_running_mode_ema_in_train_frozen_in_eval(name):
    bits = _bits(name)
    q = Quantizer(name, bits, kind="activation", signed=True)
    assert q.range_mode == "running"
    scheme = make_scheme(name, bits)
    x1, x2, x3 = torch.randn(8, 16), torch.randn(8, 16) * 3 + 1, torch.randn(8, 16) * 0.1
    dims = tuple(range(2))
    q.train()
    q(x1)
    first = _stored(q)
    est1 = scheme.estimate(x1, True, dims)
    assert first.keys() == set(scheme.param_names())
    for n in first:
        torch.testing.assert_close(first[n], est1[n].reshape(()), rtol=0, atol=0)
    q(x2)
    second = _stored(q)
    est2 = scheme.refine(x2, first, True, dims)  # estimate(x2) but for LQ-Nets' QEM round
    for n in second:
        expected = 0.9 * first[n] + 0.1 * est2[n].reshape(())
        torch.testing.assert_close(second[n], expected, rtol=1e-6, atol=1e-7)
        if not torch.equal(est1[n], est2[n]):  # (residual_binary's signed offset is always 0)
            assert not torch.equal(second[n], first[n])
    q.eval()
    y3 = q(x3)
    assert all(torch.equal(v, second[n]) for n, v in _stored(q).items())
    params = {n: v for n, v in second.items()}
    assert torch.equal(y3, scheme.quantize(x3, params, True))


@pytest.mark.parametrize("name", [n for n in ALL if not scheme_class(n).needs_learned])
def test_running_mode_first_batch_initialises_in_eval_too(name):
    bits = _bits(name)
    q = Quantizer(name, bits, kind="activation", signed=False).eval()
    assert not bool(q.initialized)
    x = torch.rand(4, 10) * 3
    q(x)
    assert bool(q.initialized)
    est = make_scheme(name, bits).estimate(x, False, (0, 1))
    for n, v in _stored(q).items():
        assert torch.equal(v, est[n].reshape(()))
    q(torch.rand(4, 10) * 100)  # eval: frozen after the first batch
    for n, v in _stored(q).items():
        assert torch.equal(v, est[n].reshape(()))


def test_custom_ema_decay():
    q = Quantizer("clip", 4, kind="activation", signed=True, ema_decay=0.5)
    x1, x2 = torch.randn(64), torch.randn(64) * 4
    q(x1)
    a1 = q.scale.clone()
    q(x2)
    a2 = make_scheme("clip", 4).estimate(x2, True, (0,))["scale"].reshape(())
    torch.testing.assert_close(q.scale, 0.5 * a1 + 0.5 * a2)


# --------------------------------------------------------------------------------------------
# Learned parameters


def test_lsq_learned_init_and_parameters():
    x = torch.randn(6, 20)
    for signed in (True, False):
        q = Quantizer("lsq", 4, kind="weight", signed=signed)
        assert q.range_mode == "learned"
        assert isinstance(q.scale, nn.Parameter)
        assert dict(q.named_parameters()).keys() == {"scale"}
        q(x)
        q_p = 2**3 - 1 if signed else 2**4 - 1
        expected = 2 * x.abs().mean() / math.sqrt(q_p)
        torch.testing.assert_close(q.scale.detach(), expected, rtol=1e-6, atol=0)
        # Later batches do not re-initialise a learned parameter.
        q(x * 10)
        torch.testing.assert_close(q.scale.detach(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", LEARNABLE)
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_learned_parameters_initialised_from_first_batch_and_get_gradients(name, kind):
    bits = _bits(name)
    q = Quantizer(name, bits, kind=kind, range_mode="learned", signed=True)
    learnable = scheme_class(name).learnable
    params = dict(q.named_parameters())
    assert params.keys() == set(learnable)
    assert all(isinstance(p, nn.Parameter) for p in params.values())
    x = torch.randn(4, 3, 5)
    y = q(x)
    est = make_scheme(name, bits).estimate(x, True, (0, 1, 2))
    for n in learnable:
        torch.testing.assert_close(params[n].detach(), est[n].reshape(()), rtol=0, atol=0)
    (y * _upstream(y.shape)).sum().backward()
    for n in learnable:
        assert params[n].grad is not None and torch.isfinite(params[n].grad).all()
        assert params[n].grad.abs().sum() > 0, n


def _lsq_scale_grad(x: torch.Tensor, s: torch.Tensor, g: torch.Tensor, lo: int, hi: int):
    """d sum(g * s * clip(round(x/s), lo, hi)) / ds, unscaled (Esser et al. 2020, eq. 3)."""
    v = x / s
    inner = torch.where(v <= lo, float(lo), torch.where(v >= hi, float(hi), torch.round(v) - v))
    return g * inner


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_gradient_scale_per_tensor_weight(signed):
    bits = 3
    q = Quantizer("lsq", bits, kind="weight", signed=signed)
    x = torch.randn(5, 7) * 2
    g = _upstream(x.shape)
    q(x).backward(g)
    lo, hi = (-4, 3) if signed else (0, 7)
    s = q.scale.detach()
    expected = _lsq_scale_grad(x, s, g, lo, hi).sum() / math.sqrt(x.numel() * hi)
    torch.testing.assert_close(q.scale.grad, expected, rtol=1e-5, atol=1e-7)


def test_lsq_gradient_scale_per_channel_weight():
    q = Quantizer("lsq", 4, kind="weight", channels=3)
    x = torch.randn(3, 2, 4) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1)
    g = _upstream(x.shape)
    q(x).backward(g)
    s = q.scale.detach().view(3, 1, 1)
    per_channel = x[0].numel()
    expected = _lsq_scale_grad(x, s, g, -8, 7).sum(dim=(1, 2)) / math.sqrt(per_channel * 7)
    torch.testing.assert_close(q.scale.grad, expected, rtol=1e-5, atol=1e-7)


def test_lsq_gradient_scale_activation_counts_features_per_sample():
    q = Quantizer("lsq", 2, kind="activation", signed=False)
    x = torch.rand(6, 3, 4) * 2
    g = _upstream(x.shape)
    q(x).backward(g)
    s = q.scale.detach()
    expected = _lsq_scale_grad(x, s, g, 0, 3).sum() / math.sqrt(x[0].numel() * 3)
    torch.testing.assert_close(q.scale.grad, expected, rtol=1e-5, atol=1e-7)


def test_learned_scale_moves_under_sgd():
    q = Quantizer("lsq", 4, kind="weight")
    x = torch.randn(64)
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q(x)
    start = q.scale.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        ((q(x) - x) ** 2).sum().backward()
        opt.step()
    assert not torch.equal(q.scale.detach(), start)


# --------------------------------------------------------------------------------------------
# Scheme flags: the scheme's own input gradient, LSQ's gradient scale, running weights


def test_every_scheme_has_the_flags_and_the_qat_schemes_set_them():
    for name in ALL:
        cls = scheme_class(name)
        for flag in ("normalizes_input", "differentiable_input", "lsq_grad_scale"):
            assert isinstance(getattr(cls, flag), bool), (name, flag)
        assert isinstance(cls.running_weights, bool)
    assert {"dorefa", "apot"} <= {n for n in ALL if scheme_class(n).normalizes_input}
    assert not scheme_class("clip").normalizes_input and not scheme_class("lsq").normalizes_input
    assert {"pact", "dorefa", "apot", "n2uq"} <= set(DIFFERENTIABLE)
    assert "lq_nets" not in DIFFERENTIABLE and "lsq" not in DIFFERENTIABLE
    assert {"pact", "apot", "n2uq"} <= {n for n in LEARNABLE if not scheme_class(n).lsq_grad_scale}
    assert scheme_class("lsq").lsq_grad_scale and scheme_class("lsq_plus").lsq_grad_scale
    assert "lq_nets" in RUNNING_WEIGHTS and "clip" not in RUNNING_WEIGHTS


@pytest.mark.parametrize("name", ALL)
def test_default_backward_is_the_schemes_own_where_it_has_one(name):
    q = Quantizer(name, _bits(name), kind="weight")
    cls = scheme_class(name)
    assert q.backward == ("scheme" if cls.differentiable_input else cls.default_backward)


def test_scheme_backward_needs_a_differentiable_scheme():
    _raises(["'scheme'", "'clip'", "ste", "clipped"], scheme="clip", bits=4, backward="scheme")
    assert Quantizer("pact", 4, kind="activation", backward="scheme").backward == "scheme"


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_scheme_backward_is_the_schemes_input_gradient_times_grad_ratio(name, kind):
    bits = _bits(name)
    x0 = torch.randn(4, 3, 5) * 1.5
    x0[0, 0, 0] = 40.0  # far outside every range
    grads = []
    for ratio in (1.0, 0.25):
        torch.manual_seed(0)
        q = Quantizer(name, bits, kind=kind, signed=True, grad_ratio=ratio)
        q(x0)
        q.eval()  # the same stored parameters for the reference below
        x = x0.clone().requires_grad_(True)
        g = _upstream(x.shape)
        q(x).backward(g)
        grads.append(x.grad)
    # Reference: the scheme's quantize on the live input, autograd, no surrogate.
    x = x0.clone().requires_grad_(True)
    live = Quantizer(name, bits, kind=kind, signed=True)
    live(x0)
    live.eval()
    live.scheme.quantize(x, live.parameters_for(x), True).backward(_upstream(x.shape))
    torch.testing.assert_close(grads[0], x.grad, rtol=0, atol=0)
    torch.testing.assert_close(grads[1], 0.25 * grads[0], rtol=1e-6, atol=0)
    assert grads[0][0, 0, 0] == 0  # the paper's gradient is zero beyond the clip
    assert (grads[0] != 0).any()


@pytest.mark.parametrize("name", LEARNABLE)
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_learned_gradient_scale_follows_the_scheme_flag(name, kind):
    bits = _bits(name)
    q = Quantizer(name, bits, kind=kind, range_mode="learned", signed=True)
    x = torch.randn(4, 3, 5) * 1.5
    q(x)
    q.eval()
    with torch.no_grad():
        for p in q.parameters():  # away from the initial values (equal N2UQ intervals)
            p.mul_(1 + 0.1 * torch.rand_like(p))
    g = _upstream(x.shape)
    q(x).backward(g)
    stored = {n: p.detach() for n, p in q.parameters_for(x).items()}
    leaves = {n: getattr(q, n).detach().clone().requires_grad_(True) for n in q._learned}
    q.scheme.quantize(x, {**stored, **leaves}, True).backward(g)
    factor = q._grad_scale(x) if q.scheme.lsq_grad_scale else 1.0
    assert factor == 1.0 or factor < 0.5
    for n, leaf in leaves.items():
        torch.testing.assert_close(getattr(q, n).grad, leaf.grad * factor, rtol=1e-5, atol=1e-7)
    assert any(leaf.grad.abs().sum() > 0 for leaf in leaves.values())


@pytest.mark.parametrize("name", RUNNING_WEIGHTS)
def test_running_weights_are_buffers_and_optional(name):
    bits = _bits(name)
    q = Quantizer(name, bits, kind="weight", channels=3)
    assert q.range_mode == "running"
    names = set(q.scheme.param_names())
    assert names <= set(dict(q.named_buffers())) and names <= set(q.state_dict())
    assert not dict(q.named_parameters())
    dynamic = Quantizer(name, bits, kind="weight", range_mode="dynamic")
    assert not names & set(dynamic.state_dict())
    w = torch.randn(3, 8)
    assert torch.equal(dynamic(w), dynamic.scheme.quantize(w, dynamic.parameters_for(w), True))


def test_running_weights_move_only_in_training_steps():
    q = Quantizer("clip", 4, kind="activation", signed=True)  # activations: any training pass
    q(torch.randn(32))
    before = q.scale.clone()
    with torch.no_grad():
        q(torch.randn(32) * 5)
    assert not torch.equal(q.scale, before)
    for name in RUNNING_WEIGHTS:  # weights: training passes with autograd on only
        q = Quantizer(name, _bits(name), kind="weight")
        w = torch.randn(6, 9)
        q(w)
        first = _stored(q)
        with torch.no_grad():
            q(w * 3)
        assert all(torch.equal(v, first[n]) for n, v in _stored(q).items())
        q.eval()
        q(w * 3)
        assert all(torch.equal(v, first[n]) for n, v in _stored(q).items())
        q.train()
        q(w * 3)
        assert any(not torch.equal(v, first[n]) for n, v in _stored(q).items())


# --------------------------------------------------------------------------------------------
# Signedness decided from data


@pytest.mark.parametrize("name", ALL)
def test_signed_none_decides_from_first_batch_and_keeps_it(name):
    bits = _bits(name)
    q = Quantizer(name, bits, kind="activation", signed=None)
    assert int(q.signed_state) == -1
    with pytest.raises(RuntimeError):
        q.signed()
    x = torch.rand(4, 8)
    q(x)  # no negative value: unsigned
    assert int(q.signed_state) == 0 and q.signed() is False
    expected_params = make_scheme(name, bits).estimate(x, False, (0, 1))
    for n, v in _stored(q).items():
        assert torch.equal(v, expected_params[n].reshape(())), n
    q.eval()
    neg = torch.randn(4, 8) - 0.5
    params = {n: p.detach() for n, p in q.parameters_for(neg).items()}
    assert torch.equal(q(neg), q.scheme.quantize(neg, params, False))  # still unsigned
    assert int(q.signed_state) == 0
    q2 = Quantizer(name, bits, kind="activation", signed=None)
    q2(torch.randn(4, 8))
    assert int(q2.signed_state) == 1 and q2.signed() is True
    q2(torch.rand(4, 8))
    assert int(q2.signed_state) == 1
    assert "signed_state" in q2.state_dict()


# --------------------------------------------------------------------------------------------
# State dict


def _quantizer_configs() -> list:
    cases = []
    for name in ALL:
        cases.append(pytest.param(name, {"kind": "activation", "signed": None}, id=f"{name}-act"))
        if scheme_class(name).learnable:
            cases.append(
                pytest.param(
                    name,
                    {"kind": "weight", "range_mode": "learned", "channels": 3},
                    id=f"{name}-w-learned-ch",
                )
            )
        if scheme_class(name).running_weights:
            cases.append(
                pytest.param(name, {"kind": "weight", "channels": 3}, id=f"{name}-w-running-ch")
            )
    return cases


@pytest.mark.parametrize(("name", "kwargs"), _quantizer_configs())
def test_state_dict_round_trip_gives_identical_outputs(name, kwargs):
    bits = _bits(name)
    q1 = Quantizer(name, bits, **kwargs)
    for _ in range(3):
        q1(torch.randn(3, 4, 5) * 2 + 0.3)
    if q1._learned:  # move learned parameters away from their initial values
        with torch.no_grad():
            for p in q1.parameters():
                p.mul_(1.1)
    q1.eval()
    q2 = Quantizer(name, bits, **kwargs).eval()
    q2.load_state_dict(q1.state_dict())  # strict
    x = torch.randn(3, 4, 5) * 2
    assert torch.equal(q1(x), q2(x))
    for k, v in q1.state_dict().items():
        assert torch.equal(v, q2.state_dict()[k]), k


# --------------------------------------------------------------------------------------------
# Per-channel parameters


@pytest.mark.parametrize("name", ALL)
def test_per_channel_parameters_match_per_channel_estimate(name):
    bits = _bits(name)
    scales = torch.tensor([0.01, 1.0, 30.0, 500.0]).view(4, 1, 1)
    x = torch.randn(4, 3, 5) * scales + torch.tensor([0.0, 0.5, -2.0, 7.0]).view(4, 1, 1)
    q = Quantizer(name, bits, kind="weight", channels=4, **_dynamic_weights(name))
    params = q.parameters_for(x)
    est = make_scheme(name, bits).estimate(x, True, reduce_all_but(x, 0))
    for n in q.scheme.param_names():
        p = params[n].detach()
        assert p.numel() == 4, n
        torch.testing.assert_close(p.reshape(4), est[n].reshape(4), rtol=0, atol=0)
    # At least one parameter differs per channel (residual_binary's signed offset is 0).
    assert any(p.detach().reshape(4).unique().numel() == 4 for p in params.values())
    assert torch.equal(q(x), make_scheme(name, bits).quantize(x, est, True))


def test_per_channel_on_another_axis_and_shape_check():
    x = torch.randn(2, 5, 3) * torch.tensor([0.1, 1, 2, 4, 8]).view(1, 5, 1)
    q = Quantizer("clip", 4, kind="weight", channels=5, channel_axis=1)
    est = make_scheme("clip", 4).estimate(x, True, reduce_all_but(x, 1))
    assert torch.equal(q(x), make_scheme("clip", 4).quantize(x, est, True))
    with pytest.raises(ValueError, match="expected 5 channels"):
        q(torch.randn(5, 2, 3))


# --------------------------------------------------------------------------------------------
# Invalid arguments: the message names the bad value and the allowed ones


def _raises(match_all: list[str], **kwargs):
    with pytest.raises(ValueError) as info:
        Quantizer(**kwargs)
    message = str(info.value)
    for fragment in match_all:
        assert fragment in message, (fragment, message)


def test_unknown_scheme():
    _raises(["'nope'", *available_schemes()], scheme="nope", bits=4)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", ["below", "above", 0, 9])
def test_bits_outside_scheme_range(name, bad):
    lo, hi = scheme_class(name).bit_range
    bits = {"below": lo - 1, "above": hi + 1}.get(bad, bad)
    if lo <= bits <= hi:
        pytest.skip("allowed for this scheme")
    allowed = f"{lo}" if lo == hi else f"{lo}..{hi}"
    _raises([f"bits={bits}", allowed, repr(name)], scheme=name, bits=bits)


@pytest.mark.parametrize(
    ("name", "bits", "allowed"),
    [("binary", 2, "1"), ("power_of_two", 5, "1..4"), ("lsq", 1, "2..8")],
)
def test_named_bit_range_errors(name, bits, allowed):
    _raises([f"bits={bits}", allowed], scheme=name, bits=bits)


def test_bits_must_be_int():
    with pytest.raises(TypeError):
        Quantizer("clip", 4.0)
    with pytest.raises(TypeError):
        Quantizer("clip", True)


def test_bad_kind():
    _raises(["'bias'", "weight", "activation"], scheme="clip", bits=4, kind="bias")


def test_bad_range_mode():
    _raises(["'sometimes'", "dynamic", "learned"], scheme="clip", bits=4, range_mode="sometimes")
    _raises(["'running'", "dynamic"], scheme="clip", bits=4, kind="weight", range_mode="running")
    _raises(
        ["'sometimes'", "dynamic", "running", "learned", "'lq_nets'"],
        scheme="lq_nets",
        bits=2,
        range_mode="sometimes",
    )
    _raises(
        ["'dynamic'", "running"], scheme="clip", bits=4, kind="activation", range_mode="dynamic"
    )


@pytest.mark.parametrize("name", NOT_LEARNABLE)
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_learned_range_for_scheme_without_learnable_parameter(name, kind):
    assert name in ("fixed_point", "residual_binary", "int_se", "dorefa", "lq_nets")
    allowed = "dynamic" if kind == "weight" else "running"
    _raises(
        ["'learned'", allowed, repr(name)],
        scheme=name,
        bits=_bits(name),
        kind=kind,
        range_mode="learned",
    )


def test_lsq_needs_learned_range():
    _raises(["'dynamic'", "'learned'", "'lsq'"], scheme="lsq", bits=4, range_mode="dynamic")
    _raises(
        ["'running'", "'learned'"], scheme="lsq", bits=4, kind="activation", range_mode="running"
    )


def test_per_channel_activation():
    _raises(["channels=4", "activation"], scheme="clip", bits=4, kind="activation", channels=4)


def test_bad_channels():
    _raises(["channels=0", ">= 1"], scheme="clip", bits=4, channels=0)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_bad_ema_decay(decay):
    _raises([f"ema_decay={decay}", "[0, 1)"], scheme="clip", bits=4, ema_decay=decay)


@pytest.mark.parametrize("ratio", [0, 0.0, -1.0])
def test_bad_grad_ratio(ratio):
    _raises([f"grad_ratio={ratio}", "> 0"], scheme="clip", bits=4, grad_ratio=ratio)


def test_bad_backward():
    _raises(["'sideways'", "ste", "clipped"], scheme="clip", bits=4, backward="sideways")


def test_signed_none_for_weights():
    _raises(["signed=None", "True"], scheme="clip", bits=4, kind="weight", signed=None)


def test_scheme_option_validation():
    _raises(["candidates=0", ">= 1"], scheme="int_se", bits=4, candidates=0)
