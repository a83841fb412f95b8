"""INT-SE bias of IOIQ: exponent window [s_in + s_w, s_in + s_w + 7]; MSE exponent search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig
from lightning_autoq.nn import QuantConv2d, QuantLinear
from lightning_autoq.nn.layers import BIAS_SHIFT_RANGE, IntSEBias
from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.functional import exponent_quantize, shared_exponent

INT_SE = LayerConfig("int_se", weight_bits=4, act_bits=4, bias_bits=8)


def _on_grid(values: torch.Tensor, exponent: torch.Tensor, bits: int) -> bool:
    codes = values / torch.exp2(exponent)
    limit = 2 ** (bits - 1)
    return bool(torch.equal(codes, torch.round(codes)) and (codes.abs() <= limit).all())


def test_mse_exponent_beats_max_based_exponent_on_outliers() -> None:
    x = torch.randn(4096) * 0.05
    x[::512] = 1.5  # a few outliers stretch the max-based grid
    dims = (0,)
    s_max = shared_exponent(x, 4, True, dims, candidates=1)
    s_mse = shared_exponent(x, 4, True, dims, candidates=4)
    err = {s: ((x - exponent_quantize(x, s, 4, True)) ** 2).mean() for s in (s_max, s_mse)}
    assert s_mse < s_max
    assert err[s_mse] < err[s_max]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_bias_exponent_is_restricted_and_bias_lands_on_its_grid(granularity: str) -> None:
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([40.0, -1e-4, 0.3, 2e-6, -7.0, 0.02]))
    layer = QuantConv2d.from_float(conv, INT_SE.replace(granularity=granularity))
    assert isinstance(layer.bias_quant, IntSEBias)
    x = torch.randn(2, 3, 8, 8)
    layer(x)
    s_in = torch.round(layer.act_quant.exponent)
    s_w = torch.round(layer.weight_quant.parameters_for(layer.weight)["exponent"]).reshape(-1)
    s_acc = layer.accumulator_exponent()
    assert torch.equal(s_acc, s_in + s_w)
    s_b = layer.bias_quant.exponent(layer.bias, s_acc)
    assert s_b.shape == (() if granularity == "tensor" else (6,))
    assert ((s_b >= s_acc) & (s_b <= s_acc + BIAS_SHIFT_RANGE)).all()
    q = layer.bias_quant(layer.bias, s_acc)
    assert _on_grid(q, s_b, 8)
    # The forward pass uses exactly that bias.
    expected = nn.functional.conv2d(layer.act_quant(x), layer.quantized_weight(), q)
    layer.eval()
    assert torch.equal(layer(x), expected)


def test_window_clamps_both_ways() -> None:
    q = IntSEBias(8)
    big, tiny = torch.tensor([2000.0]), torch.tensor([1e-6])
    s_acc = torch.tensor(-4.0)
    assert q.exponent(big, s_acc) == -4 + BIAS_SHIFT_RANGE  # saturates instead of a wider shift
    assert q.exponent(tiny, s_acc) == -4  # never finer than the accumulator
    assert q(big, s_acc) == 127 * 2.0**3
    # Unrestricted the exponent would be in range: it is the MSE one.
    mid = torch.tensor([0.3, -0.2])
    assert q.exponent(mid, torch.tensor(-12.0)) == shared_exponent(mid, 8, True, (0,)).squeeze()


def test_bias_gets_gradient_and_other_schemes_keep_their_bias_path() -> None:
    lin = QuantLinear.from_float(nn.Linear(5, 3), INT_SE)
    lin(torch.randn(4, 5)).sum().backward()
    assert lin.bias.grad is not None and torch.all(lin.bias.grad != 0)
    other = QuantLinear.from_float(nn.Linear(5, 3), LayerConfig("lsq", 4, 4, bias_bits=6))
    assert isinstance(other.bias_quant, Quantizer)
    mixed = QuantLinear.from_float(nn.Linear(5, 3), INT_SE.replace(act_scheme="lsq"))
    assert isinstance(mixed.bias_quant, Quantizer)
    none = QuantLinear.from_float(nn.Linear(5, 3), INT_SE.replace(bias_bits=None))
    assert none.bias_quant is None


def test_state_dict_keys_unchanged_by_int_se_bias() -> None:
    lin = QuantLinear.from_float(nn.Linear(5, 3), INT_SE)
    assert not any(k.startswith("bias_quant.") for k in lin.state_dict())
