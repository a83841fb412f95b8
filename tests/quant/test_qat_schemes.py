"""The QAT-method schemes (LSQ+, PACT, DoReFa, APoT, LQ-Nets, N2UQ): each one's mechanism
against its paper's formula on hand-made tensors, and their use in policies and QSS cells."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig, Quantizer, QuantPolicy, convert
from lightning_autoq.quant import make_scheme
from lightning_autoq.quant.mixture import SchemeMixture
from lightning_autoq.quant.schemes.apot import apot_magnitudes
from lightning_autoq.quant.schemes.lq_nets import (
    basis_levels,
    code_matrix,
    least_squares_basis,
    nearest_codes,
)
from lightning_autoq.quant.schemes.n2uq import PARTS, part_groups

pytestmark = pytest.mark.usefixtures("single_thread")

NEW = ["lsq_plus", "pact", "dorefa", "apot", "lq_nets", "n2uq"]


def _upstream(shape: torch.Size) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(shape, generator=g) + 0.5


# -------------------------------------------------------------------------------- PACT


def test_pact_forward_and_alpha_gradient_match_the_paper():
    x = torch.tensor([-1.0, 0.0, 0.2, 0.5, 0.99, 1.0, 1.5, 3.0], requires_grad=True)
    alpha = torch.tensor(1.0, requires_grad=True)
    g = _upstream(x.shape)
    q = make_scheme("pact", 2).quantize(x, {"alpha": alpha}, False)
    # y = clip(x, 0, alpha); q = round(y * 3 / alpha) * alpha / 3
    y = x.detach().clamp(0, 1)
    torch.testing.assert_close(q.detach(), torch.round(y * 3) / 3)
    q.backward(g)
    # Paper eq. 3: dq/dalpha = 1 for x >= alpha, else 0; input: 1 inside [0, alpha).
    beyond = x.detach() >= 1.0
    torch.testing.assert_close(alpha.grad, (g * beyond).sum())
    inside = (x.detach() >= 0) & ~beyond
    torch.testing.assert_close(x.grad, g * inside)


def test_pact_gradients_through_the_quantizer_module_are_the_papers_unscaled():
    q = Quantizer("pact", 3, kind="activation", signed=False)
    assert q.backward == "scheme"
    x0 = torch.rand(4, 6) * 3
    q(x0)
    with torch.no_grad():
        q.alpha.fill_(1.5)
    x = x0.clone()
    x[0, :3] = torch.tensor([1.5, -0.2, 0.0])  # the clip's edges: x == alpha, x < 0, x == 0
    x.requires_grad_(True)
    g = _upstream(x.shape)
    q(x).backward(g)
    # PACT eq. 3: dq/dalpha = 1 where x >= alpha, no LSQ factor; dq/dx = 1 on [0, alpha).
    clipped = x.detach() >= 1.5
    assert 0 < int(clipped.sum()) < x.numel()
    torch.testing.assert_close(q.alpha.grad, (g * clipped).sum(), rtol=1e-6, atol=0)
    inside = (x.detach() >= 0) & ~clipped
    assert torch.equal(x.grad, g * inside)
    assert x.grad[0, 0] == 0 and x.grad[0, 1] == 0 and x.grad[0, 2] == g[0, 2]


def test_pact_grad_ratio_scales_only_the_input_gradient():
    grads = []
    for ratio in (1.0, 0.25):
        q = Quantizer("pact", 2, kind="activation", signed=False, grad_ratio=ratio)
        x = (torch.arange(12.0) / 4).requires_grad_(True)
        q(x)
        with torch.no_grad():
            q.alpha.fill_(2.0)
        q(x).backward(_upstream(x.shape))
        grads.append((x.grad.clone(), q.alpha.grad.clone()))
    torch.testing.assert_close(grads[1][0], 0.25 * grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)


def test_pact_signed_clips_symmetrically():
    alpha = torch.tensor(2.0, requires_grad=True)
    x = torch.tensor([-5.0, -1.0, 0.4, 3.0])
    out = make_scheme("pact", 3).quantize(x, {"alpha": alpha}, True)
    torch.testing.assert_close(out, torch.tensor([-2.0, -4 / 3, 2 / 3, 2.0]))
    out.sum().backward()
    assert alpha.grad.item() == pytest.approx(0.0)  # -1 (x < -alpha) + 1 (x >= alpha)


# -------------------------------------------------------------------------------- DoReFa


def test_dorefa_weight_levels_and_values_match_the_paper():
    scheme = make_scheme("dorefa", 2)
    w = torch.tensor([[-0.8, -0.1, 0.05, 0.3, 0.7]])
    params = scheme.estimate(w, True, (0, 1))
    levels = scheme.levels(params, True).reshape(-1)
    torch.testing.assert_close(levels, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    t = torch.tanh(w) / (2 * torch.tanh(w).abs().max()) + 0.5
    expected = 2 * torch.round(3 * t) / 3 - 1  # eq. 9: 2 quantize_k(t) - 1
    torch.testing.assert_close(scheme.quantize(w, params, True), expected)


def test_dorefa_activations_clip_at_one():
    scheme = make_scheme("dorefa", 2)
    x = torch.tensor([-0.5, 0.1, 0.5, 0.9, 4.0])
    params = scheme.estimate(x, False, (0,))
    torch.testing.assert_close(
        scheme.quantize(x, params, False), torch.tensor([0.0, 0.0, 2 / 3, 1.0, 1.0])
    )
    torch.testing.assert_close(
        scheme.levels(params, False).reshape(-1), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    )


@pytest.mark.parametrize("channels", [None, 3])
def test_dorefa_weight_input_gradient_is_autograd_of_eq9(channels):
    q = Quantizer("dorefa", 3, kind="weight", channels=channels)
    assert q.backward == "scheme"
    w = (torch.randn(3, 2, 4) * torch.tensor([0.05, 0.5, 2.0]).view(3, 1, 1)).requires_grad_(True)
    g = _upstream(w.shape)
    out = q(w)
    out.backward(g)
    # Eq. 9 in float64, STE through quantize_k only: d/dw of 2 t - 1 with
    # t = tanh(w) / (2 max|tanh(w)|) + 1/2, the max differentiated too (the authors' code).
    ref = w.detach().double().requires_grad_(True)
    dims = (0, 1, 2) if channels is None else (1, 2)
    t = torch.tanh(ref) / (2 * torch.tanh(ref).abs().amax(dim=dims, keepdim=True)) + 0.5
    torch.testing.assert_close(out.detach().double(), 2 * torch.round(7 * t.detach()) / 7 - 1)
    ((2 * t - 1) * g.double()).sum().backward()
    torch.testing.assert_close(w.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)
    # ... which is not the straight-through gradient the quantizer used to attach.
    assert not torch.allclose(w.grad, g, rtol=0.05)


def test_dorefa_activation_input_gradient_is_one_inside_zero_one():
    q = Quantizer("dorefa", 2, kind="activation", signed=False)
    x = torch.tensor([-0.5, -0.001, 0.001, 0.3, 0.7, 0.999, 1.001, 1.4], requires_grad=True)
    g = _upstream(x.shape)
    q(x).backward(g)
    assert torch.equal(x.grad, g * torch.tensor([0.0, 0, 1, 1, 1, 1, 0, 0]))


# -------------------------------------------------------------------------------- APoT


def _paper_apot_set(bits: int, k: int = 2) -> list[float]:
    """Paper eq. 5 written out for b = k n: p_i in {0, 2^-i, 2^-(i+n), ...}, gamma = 1/max."""
    n = bits // k
    terms = [[0.0] + [2.0 ** -(i + j * n) for j in range(2**k - 1)] for i in range(n)]
    sums = sorted({sum(c) for c in itertools.product(*terms)})
    return [s / max(sums) for s in sums]


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_apot_magnitudes_match_the_paper_formula(bits):
    assert list(apot_magnitudes(bits)) == pytest.approx(_paper_apot_set(bits))
    assert len(apot_magnitudes(bits)) == 2**bits


def test_apot_four_bit_set_written_out():
    # b=4, k=2, n=2: p0 in {0, 1, 1/4, 1/16}, p1 in {0, 1/2, 1/8, 1/32}; gamma = 1 / 1.5.
    p0, p1 = [0, 1, 1 / 4, 1 / 16], [0, 1 / 2, 1 / 8, 1 / 32]
    expected = sorted(a + b for a in p0 for b in p1)
    assert list(apot_magnitudes(4)) == pytest.approx([v / 1.5 for v in expected])


def test_apot_levels_and_rcf_gradient():
    scheme = make_scheme("apot", 3)  # signed: sign + 2 magnitude bits: {0, 1/4, 1/2, 1}
    alpha = torch.tensor(2.0, requires_grad=True)
    params = {"alpha": alpha, "mean": torch.tensor(0.0), "std": torch.tensor(1.0)}
    levels = scheme.levels(params, True).detach()
    torch.testing.assert_close(levels, 2 * torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]))
    x = torch.tensor([0.3, 0.9, 1.7, 5.0, -3.0])
    q = scheme.quantize(x, params, True)
    torch.testing.assert_close(q.detach(), torch.tensor([0.5, 1.0, 2.0, 2.0, -2.0]))
    g = _upstream(x.shape)
    q.backward(g)
    u = (x / 2).clamp(-1, 1)
    proj = q.detach() / 2
    rcf = torch.where(x.abs() > 2, torch.sign(x), proj - u)  # APoT eq. 7
    torch.testing.assert_close(alpha.grad, (g * rcf).sum())


def test_apot_weight_gradients_through_the_quantizer_are_the_papers():
    q = Quantizer("apot", 3, kind="weight")
    w0 = torch.randn(48) * 0.05 + 0.2
    w0[0] = 0.9  # beyond mean + 3 std: clipped
    q(w0)
    with torch.no_grad():
        q.alpha.fill_(2.5)
    w = w0.clone().requires_grad_(True)
    g = _upstream(w.shape)
    out = q(w)
    out.backward(g)
    mean, sd = w0.mean(), w0.std(correction=0)
    z = (w0 - mean) / sd
    inside = z.abs() <= 2.5
    assert not inside[0] and inside.sum() > 40
    # Input: 1 / std through the normalisation inside the clip, 0 outside.
    torch.testing.assert_close(w.grad, torch.where(inside, g / sd, torch.zeros_like(g)))
    # alpha: the RCF gradient (eq. 7), Pi(u) - u inside and sign(z) outside, unscaled.
    u = (z / 2.5).clamp(-1, 1)
    proj = out.detach() / 2.5
    rcf = torch.where(inside, proj - u, torch.sign(z))
    torch.testing.assert_close(q.alpha.grad, (g * rcf).sum(), rtol=1e-4, atol=1e-5)


def test_apot_normalises_weights():
    scheme = make_scheme("apot", 4)
    w = torch.randn(64) * 0.05 + 0.2
    params = scheme.estimate(w, True, (0,))
    torch.testing.assert_close(params["mean"], w.mean().reshape(1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(params["std"], w.std(correction=0).reshape(1), rtol=1e-5, atol=0)
    scaled = scheme.quantize(w * 10 + 3, scheme.estimate(w * 10 + 3, True, (0,)), True)
    torch.testing.assert_close(scaled, scheme.quantize(w, params, True))  # scale invariant


# -------------------------------------------------------------------------------- LQ-Nets


@pytest.mark.parametrize("signed", [True, False])
def test_lq_nets_basis_is_the_least_squares_solution_for_fixed_codes(signed):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, generator=g).abs() if not signed else torch.randn(1, 200, generator=g)
    codes = code_matrix(3, signed, x)
    index = torch.randint(0, 8, (1, 200), generator=g)
    v = least_squares_basis(x, index, codes)
    B = codes[index[0]]  # (M, K)
    expected = torch.linalg.lstsq(B.double(), x[0].double().unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(v[0].double(), expected, rtol=1e-4, atol=1e-5)


def test_lq_nets_estimate_is_a_qem_fixed_point_and_beats_the_uniform_start():
    x = torch.randn(1000)
    scheme = make_scheme("lq_nets", 2, iterations=30)
    params = scheme.estimate(x, True, (0,))
    v = torch.stack([params["basis0"], params["basis1"]], dim=-1).reshape(1, 2)
    codes = code_matrix(2, True, x)
    _, index = nearest_codes(x.reshape(1, -1), basis_levels(list(v.unbind(1)), codes))
    refit = least_squares_basis(x.reshape(1, -1), index, codes)
    torch.testing.assert_close(refit, v, rtol=1e-4, atol=1e-6)
    fitted = ((scheme.quantize(x, params, True) - x) ** 2).mean()
    start = make_scheme("lq_nets", 2, iterations=1)  # one LS step from the uniform basis
    one = ((start.quantize(x, start.estimate(x, True, (0,)), True) - x) ** 2).mean()
    assert fitted <= one + 1e-7
    # 2-bit Lloyd-Max levels of a Gaussian: +-0.4528, +-1.510 (sigma units), v = (0.53, 0.98).
    torch.testing.assert_close(
        basis_levels(list(v.unbind(1)), codes).sort().values.reshape(-1),
        torch.tensor([-1.510, -0.4528, 0.4528, 1.510]),
        rtol=0.08,
        atol=0.05,
    )


def _qem_step(x: torch.Tensor, basis: torch.Tensor, signed: bool) -> torch.Tensor:
    """One QEM round written out per group (row of ``x``): the codes of the nearest levels
    ``v^T e`` under ``basis`` (rows), then ``v* = argmin ||x - B v||`` by ``lstsq`` (float64)."""
    bits = basis.shape[1]
    codes = code_matrix(bits, signed, x).double()  # (2^K, K)
    out = []
    for row, v in zip(x.double(), basis.double(), strict=True):
        levels = codes @ v
        index = (row[:, None] - levels[None, :]).abs().argmin(dim=1)
        b = codes[index]
        out.append(torch.linalg.lstsq(b, row[:, None]).solution.squeeze(1))
    return torch.stack(out)


def _basis(q: Quantizer) -> torch.Tensor:
    """The stored basis as ``(groups, K)``."""
    return torch.stack([getattr(q, f"basis{k}").reshape(-1) for k in range(q.bits)], dim=1)


def test_lq_nets_activation_basis_is_a_moving_average_of_qem_steps():
    q = Quantizer("lq_nets", 2, kind="activation", signed=False)
    x1, x2 = torch.rand(8, 16), torch.rand(8, 16) * 3
    q(x1)
    first = _basis(q).clone()
    q(x2)
    v_star = _qem_step(x2.reshape(1, -1), first, False).float()
    torch.testing.assert_close(_basis(q), 0.9 * first + 0.1 * v_star, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_basis(q), first)


def test_lq_nets_weight_basis_is_an_ema_buffer_in_training_and_fixed_in_eval():
    q = Quantizer("lq_nets", 2, kind="weight", channels=3)
    assert q.range_mode == "running" and "basis0" in dict(q.named_buffers())
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, 3, generator=g) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1)
    w.requires_grad_(True)
    q(w)  # first call: the QEM fit of estimate()
    fitted = make_scheme("lq_nets", 2).estimate(w.detach(), True, (1, 2))
    torch.testing.assert_close(_basis(q)[:, 1], fitted["basis1"].reshape(3), rtol=0, atol=0)
    basis = _basis(q).clone()
    for _ in range(3):  # training steps: w changes, the basis follows by EMA of QEM steps
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=g) * 0.3)
        out = q(w)
        v_star = _qem_step(w.detach().reshape(3, -1), basis, True).float()
        basis = 0.9 * basis + 0.1 * v_star
        torch.testing.assert_close(_basis(q), basis, rtol=1e-5, atol=1e-6)
        levels = basis_levels(list(_basis(q).unbind(1)), code_matrix(2, True, w))  # (3, 4)
        expected, _ = nearest_codes(w.detach().reshape(3, -1), levels)
        torch.testing.assert_close(out.detach(), expected.reshape(w.shape), rtol=0, atol=0)
        out.sum().backward()
        assert torch.equal(w.grad, torch.ones_like(w))  # the paper's straight-through input
        w.grad = None
    q.eval()
    frozen = _basis(q).clone()
    out = q(w * 2)
    assert torch.equal(_basis(q), frozen)
    levels = basis_levels(list(frozen.unbind(1)), code_matrix(2, True, w))
    expected, _ = nearest_codes((w.detach() * 2).reshape(3, -1), levels)
    torch.testing.assert_close(out.detach(), expected.reshape(w.shape), rtol=0, atol=0)


# -------------------------------------------------------------------------------- LSQ+


def test_lsq_plus_offset_gets_the_paper_gradient():
    q = Quantizer("lsq_plus", 3, kind="activation", signed=True)
    x = torch.randn(6, 8) - 0.3
    q(x)
    with torch.no_grad():
        q.scale.fill_(0.2)
        q.offset.fill_(-0.1)
    g = _upstream(x.shape)
    y = q(x)
    y.backward(g)
    v = (x + 0.1) / 0.2
    outside = (v < -4) | (v > 3)
    assert outside.any() and (~outside).any()
    expected = (g * outside).sum() * q._grad_scale(x)  # dq/dbeta = 1 outside, 0 inside
    torch.testing.assert_close(q.offset.grad, expected)
    torch.testing.assert_close(y.detach(), torch.clamp(torch.round(v), -4, 3) * 0.2 - 0.1)


def test_lsq_plus_offset_follows_a_shifted_distribution():
    q = Quantizer("lsq_plus", 4, kind="activation", signed=None)
    x = torch.rand(16, 32) * 2 - 0.3  # swish-like: some negatives
    q(x)
    assert q.signed() is True
    torch.testing.assert_close(q.offset.detach(), x.mean(), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- N2UQ


def test_n2uq_parts_cover_every_interval():
    for bits in (2, 3, 4):
        groups = part_groups(bits)
        assert len(groups) == 2**bits - 1
        assert sorted(i for g in groups for i in g) == list(range(PARTS))


def _n2uq_params(bits: int, lengths: list[float], scale: float = 1.0) -> dict:
    params = {"scale": torch.tensor(scale, requires_grad=True)}
    for length, group in zip(lengths, part_groups(bits), strict=True):
        for i in group:
            params[f"part{i}"] = torch.tensor(length / len(group), requires_grad=True)
    return params


def test_n2uq_thresholds_are_interval_midpoints_and_outputs_uniform():
    scheme = make_scheme("n2uq", 2)
    params = _n2uq_params(2, [0.1, 0.3, 0.6])  # boundaries 0, .1, .4, 1: thresholds .05 .25 .7
    x = torch.tensor([0.04, 0.06, 0.24, 0.26, 0.69, 0.71, 2.0, -1.0])
    q = scheme.quantize(x, params, False)
    torch.testing.assert_close(
        q.detach(), torch.tensor([0, 1, 1, 2, 2, 3, 3, 0], dtype=torch.float32) / 3
    )


def test_n2uq_thresholds_and_scale_get_the_gste_gradient():
    scheme = make_scheme("n2uq", 2)
    params = _n2uq_params(2, [0.2, 0.3, 0.5], scale=2.0)
    x = torch.tensor([0.1, 0.5, 0.9, 1.3, 1.9, 2.5], requires_grad=True)
    q = scheme.quantize(x, params, False)
    g = _upstream(x.shape)
    q.backward(g)
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs() > 0, name
    # G-STE: dq/dx = c * 1 / (n a_i c) = 1 / (3 a_i) inside interval i (u = x / 2).
    a = torch.tensor([0.2, 0.3, 0.5])
    u = x.detach() / 2
    interval = torch.bucketize(u, torch.tensor([0.2, 0.5]), right=True).clamp(max=2)
    slope = torch.where(u < 1, 1 / (3 * a[interval]), torch.zeros_like(u))
    torch.testing.assert_close(x.grad, g * slope)
    # Reference: the same piecewise-linear function differentiated by autograd in float64.
    lengths = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    uu = (x.detach().double() / c).clamp(0, 1)
    rel = lengths / lengths.sum()
    start = torch.cat([torch.zeros(1, dtype=torch.float64), rel.cumsum(0)[:-1]])
    f = ((uu[:, None] - start) / rel).clamp(0, 1).sum(1) / 3
    (c * f * g.double()).sum().backward()
    torch.testing.assert_close(params["scale"].grad.double(), c.grad, rtol=1e-5, atol=1e-6)
    # part i's gradient is the interval's gradient (a part's share of its interval is 1/size).
    for length_grad, group in zip(lengths.grad, part_groups(2), strict=True):
        for i in group:
            torch.testing.assert_close(
                params[f"part{i}"].grad.double(), length_grad, rtol=1e-4, atol=1e-6
            )


def test_n2uq_gradients_through_the_quantizer_are_the_gste_unscaled():
    q = Quantizer("n2uq", 2, kind="activation", signed=False)
    assert q.backward == "scheme"
    q(torch.rand(8, 8) * 2)
    lengths = [0.2, 0.3, 0.5]
    with torch.no_grad():
        q.scale.fill_(2.0)
        for length, group in zip(lengths, part_groups(2), strict=True):
            for i in group:
                getattr(q, f"part{i}").fill_(length / len(group))
    x = torch.tensor([0.1, 0.5, 0.9, 1.3, 1.9, 2.5, -0.3], requires_grad=True)
    g = _upstream(x.shape)
    q(x).backward(g)
    # Input: the G-STE slope 1 / (n a_i) in interval i of u = x / c, 0 outside [0, c].
    a = torch.tensor(lengths)
    u = x.detach() / 2
    interval = torch.bucketize(u, torch.tensor([0.2, 0.5]), right=True).clamp(max=2)
    inside = (u >= 0) & (u <= 1)
    torch.testing.assert_close(x.grad, torch.where(inside, g / (3 * a[interval]), 0 * g))
    # Parameters: the scheme's G-STE gradient with no LSQ factor.
    ref = _n2uq_params(2, lengths, scale=2.0)
    make_scheme("n2uq", 2).quantize(x.detach(), ref, False).backward(g)
    for name, p in ref.items():
        torch.testing.assert_close(getattr(q, name).grad, p.grad, rtol=1e-6, atol=1e-7)
    assert ref["scale"].grad.abs() > 0


def test_n2uq_learned_parts_get_gradients_through_the_quantizer():
    q = Quantizer("n2uq", 3, kind="activation", signed=False)
    x = torch.rand(8, 20) * 2
    q(x).backward(_upstream(x.shape))
    grads = {n: p.grad for n, p in q.named_parameters()}
    assert len(grads) == PARTS + 1
    assert all(v is not None and v.abs() > 0 for v in grads.values()), grads


# -------------------------------------------------------------------------------- use


@pytest.mark.parametrize("name", NEW)
def test_scheme_by_name_in_a_policy_trains(name):
    bits = 2
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten()
    )
    policy = QuantPolicy(
        LayerConfig(name, bits, bits),
        first_last_bits=None,
        overrides={"0": {"scheme": "lsq", "weight_bits": 8, "act_bits": 8}},
    )
    convert(model, policy)
    assert model[3].weight_quant.scheme.name == name
    assert model[3].act_quant.scheme.name == name
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(6, 1, 8, 8)
    before = model[3].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert not torch.equal(model[3].weight.detach(), before)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert QuantPolicy.from_yaml(policy.to_yaml()) == policy


def test_new_schemes_as_scheme_mixture_candidates():
    for kind in ("weight", "activation"):
        candidates = [Quantizer(n, 2, kind=kind, signed=True) for n in NEW]
        cell = SchemeMixture(candidates)
        x = torch.randn(4, 3, 5, requires_grad=True)
        cell(x).sum().backward()
        assert cell.theta.grad is not None and torch.isfinite(cell.theta.grad).all()
        assert cell.theta.grad.abs().sum() > 0
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert cell.fix().candidate.scheme.name in NEW


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("pact", {"init_alpha": 0.0}, "init_alpha=0.0"),
        ("lq_nets", {"iterations": 0}, "iterations=0"),
        ("apot", {"base_bits": 0}, "base_bits=0"),
    ],
)
def test_bad_scheme_options(name, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        Quantizer(name, 2, **options)


def test_pact_paper_init_option():
    q = Quantizer("pact", 4, kind="activation", signed=False, init_alpha=10.0)
    q(torch.rand(4, 4))
    assert q.alpha.item() == 10.0
