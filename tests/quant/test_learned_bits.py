"""LearnedBits: bit-exact forward, the STE gradient to the bits, width changes, bad schemes."""

from __future__ import annotations

import pytest
import torch

from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.learned_bits import (
    BIT_RULES,
    LearnedBits,
    learnable_bit_range,
    round_bits,
    strip_learned_bits,
)
from lightning_autoq.quant.schemes.gaussian import CLIP_FACTORS

UNIFORM = sorted(BIT_RULES)


@pytest.mark.parametrize("kind", ["weight", "activation"])
@pytest.mark.parametrize("scheme", UNIFORM)
def test_forward_is_the_plain_quantizer_at_the_rounded_width(scheme: str, kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    plain = Quantizer(scheme, 3, kind=kind)
    wrapped = LearnedBits(Quantizer(scheme, 5, kind=kind), 2, 8)
    wrapped.bits_float.data.fill_(3.3)  # rounds to 3
    out = wrapped(x.clone().requires_grad_())
    assert wrapped.bits == 3 and wrapped.scheme.bits == 3
    assert torch.equal(out, plain(x))


@pytest.mark.parametrize("scheme", ["clip", "ul2q", "fixed_point", "int_se", "zoom"])
def test_task_gradient_reaches_the_bits_and_asks_for_more_precision(scheme: str) -> None:
    # The quantization error falls with more bits; its gradient to bits_float must say so.
    torch.manual_seed(1)
    w = torch.randn(64, 16)
    q = LearnedBits(Quantizer(scheme, 3, kind="weight"), 2, 8)
    ((q(w.requires_grad_()) - w.detach()) ** 2).sum().backward()
    grad = q.bits_float.grad
    assert grad is not None and torch.isfinite(grad) and grad < 0
    coarse = ((Quantizer(scheme, 3)(w) - w) ** 2).sum()
    fine = ((Quantizer(scheme, 4)(w) - w) ** 2).sum()
    assert fine < coarse  # the sign agrees with the discrete change


def test_learned_step_gets_the_bits_gradient_through_the_code_range() -> None:
    # LSQ's step is learned (independent of b): only clipped values move with the range.
    torch.manual_seed(2)
    w = torch.randn(256) * 3
    q = LearnedBits(Quantizer("lsq", 2, kind="weight"), 2, 8)
    out = q(w)
    ((out - w) ** 2).sum().backward()
    assert q.bits_float.grad is not None and q.bits_float.grad < 0
    q.bits_float.grad = None
    small = torch.linspace(-0.01, 0.01, 9)  # nothing clipped at 8 bits -> no bits gradient
    q8 = LearnedBits(Quantizer("lsq", 8, kind="weight"), 2, 8)
    q8(torch.randn(256))  # initialise the step on a wide tensor
    ((q8(small) - small) ** 2).sum().backward()
    assert q8.bits_float.grad == 0


def test_no_bits_gradient_when_frozen_or_in_eval() -> None:
    q = LearnedBits(Quantizer("clip", 4, kind="weight"), 2, 8)
    w = torch.randn(16, 4, requires_grad=True)
    q.frozen.fill_(True)
    q(w).sum().backward()
    assert q.bits_float.grad is None
    q.frozen.fill_(False)
    q.eval()
    q(w).sum().backward()
    assert q.bits_float.grad is None


def test_running_statistics_follow_a_width_change() -> None:
    q = LearnedBits(Quantizer("clip", 4, kind="activation"), 2, 8)
    x = torch.randn(32, 10)
    q(x)
    scale4 = q.quantizer.scale.clone()
    q.bits_float.data.fill_(3.0)
    q.follow_bits()
    assert q.bits == 3
    expected = scale4 * CLIP_FACTORS[2] / CLIP_FACTORS[3]
    torch.testing.assert_close(q.quantizer.scale, expected)


def test_state_dict_restores_the_width_without_rescaling_twice() -> None:
    a = LearnedBits(Quantizer("fixed_point", 6, kind="activation"), 2, 8)
    a(torch.randn(8, 4))
    a.bits_float.data.fill_(4.0)
    a.follow_bits()
    b = LearnedBits(Quantizer("fixed_point", 6, kind="activation"), 2, 8)
    b.load_state_dict(a.state_dict())
    assert b.bits == 4 and b.scheme.bits == 4
    b.follow_bits()
    assert torch.equal(b.quantizer.exponent, a.quantizer.exponent)
    x = torch.randn(8, 4)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("scheme", ["binary", "ternary", "power_of_two", "residual_binary"])
def test_fixed_width_schemes_are_refused(scheme: str) -> None:
    bits = {"binary": 1, "ternary": 2}.get(scheme, 2)
    with pytest.raises(ValueError, match=rf"scheme '{scheme}' cannot learn its bit-width"):
        LearnedBits(Quantizer(scheme, bits), 1, 8)


def test_bit_range_is_clamped_into_the_scheme_and_checked() -> None:
    assert learnable_bit_range("lsq", 1, 8) == (2, 8)
    assert learnable_bit_range("clip", 1, 3) == (1, 3)
    with pytest.raises(ValueError, match="cannot learn"):
        learnable_bit_range("binary", 1, 8)
    assert [round_bits(v, 2, 6) for v in (0.0, 2.49, 2.5, 5.7, 9.0)] == [2, 2, 3, 6, 6]


def test_strip_returns_the_plain_quantizer() -> None:
    from torch import nn

    holder = nn.Module()
    holder.q = LearnedBits(Quantizer("zoom", 4, kind="weight"), 2, 8)
    holder.q.bits_float.data.fill_(2.0)
    x = torch.randn(5, 5)
    expected = holder.q(x)
    strip_learned_bits(holder)
    assert isinstance(holder.q, Quantizer) and holder.q.bits == 2
    assert torch.equal(holder.q(x), expected)
