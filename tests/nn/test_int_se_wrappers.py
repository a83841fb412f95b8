"""INT-SE layers under the incremental and scheme-search wrappers; one weight exponent search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_autoq.quant.schemes.exponent as exponent_module
from lightning_autoq import LayerConfig
from lightning_autoq.nn import QuantConv2d, QuantLinear
from lightning_autoq.nn.layers import BIAS_SHIFT_RANGE, IntSEBias, quantize_weight
from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.functional import shared_exponent
from lightning_autoq.quant.incremental import IncrementalWeight
from lightning_autoq.quant.mixture import SchemeMixture

INT_SE = LayerConfig("int_se", weight_bits=4, act_bits=4, bias_bits=8)


@pytest.mark.parametrize("scheme", ["int_se", "fixed_point"])
@pytest.mark.parametrize("channels", [None, 6])
def test_quantize_weight_matches_the_quantizer_value_and_gradient(
    scheme: str, channels: int | None
) -> None:
    q = Quantizer(scheme, 4, kind="weight", channels=channels)
    w = (torch.randn(6, 3, 3, 3) * torch.rand(6, 1, 1, 1)).requires_grad_(True)
    out, s_w = quantize_weight(q, w)
    expected = q(w)
    assert torch.equal(out, expected)
    assert s_w is not None and torch.equal(s_w, q.parameters_for(w)["exponent"])
    g = torch.randn_like(w)
    (grad_once,) = torch.autograd.grad(out, w, g)
    (grad_plain,) = torch.autograd.grad(expected, w, g)
    assert torch.equal(grad_once, grad_plain)


def test_a_layer_forward_searches_the_weight_exponent_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, ...]] = []

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return shared_exponent(x, *args, **kwargs)

    monkeypatch.setattr(exponent_module, "shared_exponent", counting)
    layer = QuantConv2d.from_float(nn.Conv2d(3, 6, 3), INT_SE)
    layer(torch.randn(2, 3, 8, 8))
    # One search for the input (running exponent) and one for the weight, none repeated.
    assert sorted(calls) == sorted([(2, 3, 8, 8), (6, 3, 3, 3)])


def _cell(kind: str, bits: int = 4, **kwargs) -> SchemeMixture:
    extra = {"signed": None} if kind == "activation" else {}
    cands = [Quantizer(s, bits, kind=kind, **extra, **kwargs) for s in ("clip", "int_se")]  # type: ignore[arg-type]
    return SchemeMixture(cands, sampling="hard")


def test_search_cells_in_an_int_se_layer_fixed_on_int_se_match_the_plain_layer() -> None:
    torch.manual_seed(0)
    plain = QuantLinear.from_float(nn.Linear(5, 3), INT_SE)
    with torch.no_grad():
        plain.bias.copy_(torch.tensor([3.0, -1e-4, 0.25]))
    searched = QuantLinear.from_float(nn.Linear(5, 3), INT_SE)
    searched.load_state_dict(plain.state_dict())
    searched.weight_quant = _cell("weight").fix(1)  # type: ignore[assignment]
    searched.act_quant = _cell("activation").fix(1)  # type: ignore[assignment]
    x = torch.randn(8, 5)
    assert torch.equal(searched(x), plain(x))
    assert torch.equal(searched.accumulator_exponent(), plain.accumulator_exponent())
    s_acc = plain.accumulator_exponent()
    s_b = plain.bias_quant.exponent(plain.bias, s_acc)  # type: ignore[union-attr]
    assert s_acc <= s_b <= s_acc + BIAS_SHIFT_RANGE


def test_sampled_cells_drive_the_bias_window_and_other_schemes_unwindow_it() -> None:
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(5, 3), INT_SE)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([3.0, -1e-4, 0.25]))
    layer.weight_quant = _cell("weight")  # type: ignore[assignment]
    layer.act_quant = _cell("activation")  # type: ignore[assignment]
    bias_quant = layer.bias_quant
    assert isinstance(bias_quant, IntSEBias)
    seen = set()
    for seed in range(12):
        for cell in (layer.weight_quant, layer.act_quant):
            cell.generator = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 5)
        out = layer(x)
        wi, ai = layer.weight_quant.last_index, layer.act_quant.last_index
        seen.add((wi, ai))
        act = layer.act_quant.candidates[ai]
        qx = act.eval()(x)  # the running exponent the forward used, not updated again
        act.train()
        qw = layer.weight_quant.candidates[wi](layer.weight)
        if (wi, ai) == (1, 1):
            qb = bias_quant(layer.bias, layer.accumulator_exponent())
        else:  # clip somewhere: no accumulator exponent, the bias has its own MSE exponent
            qb = bias_quant(layer.bias, None)
            with pytest.raises(ValueError, match="power-of-two"):
                layer.accumulator_exponent()
        assert torch.equal(out, nn.functional.linear(qx, qw, qb))
    assert (1, 1) in seen and len(seen) > 1


def test_incremental_int_se_layer_uses_its_fixed_grid_for_the_bias() -> None:
    torch.manual_seed(0)
    layer = QuantConv2d.from_float(nn.Conv2d(3, 6, 3), INT_SE)
    x = torch.randn(2, 3, 8, 8)
    layer(x)
    wrapper = IncrementalWeight(layer.weight_quant, layer.weight, "magnitude")
    layer.weight_quant = wrapper  # type: ignore[assignment]
    before = layer.accumulator_exponent()  # not started: the quantizer's own exponent
    wrapper.start(layer.weight)
    wrapper.advance(layer.weight, 0.5)
    with torch.no_grad():
        layer.weight.mul_(8.0)  # the float part grows; the grid stays
    s_acc = layer.accumulator_exponent()
    assert torch.equal(s_acc, before)
    assert torch.equal(
        s_acc, torch.round(layer.act_quant.exponent) + wrapper.grid()["exponent"].reshape(-1)
    )
    layer.eval()
    qb = layer.bias_quant(layer.bias, s_acc)  # type: ignore[operator]
    expected = nn.functional.conv2d(layer.act_quant(x), wrapper(layer.weight), qb)
    assert torch.equal(layer(x), expected)


def test_scheme_options_reach_the_quantizers_and_the_bias() -> None:
    config = INT_SE.replace(scheme_options={"candidates": 1})
    layer = QuantLinear.from_float(nn.Linear(5, 3), config)
    assert layer.weight_quant.scheme.candidates == 1  # type: ignore[attr-defined]
    assert layer.act_quant.scheme.candidates == 1  # type: ignore[union-attr]
    assert layer.bias_quant.candidates == 1  # type: ignore[union-attr]
    other = QuantLinear.from_float(nn.Linear(5, 3), config.replace(act_scheme="clip"))
    assert other.act_quant.scheme.name == "clip"  # type: ignore[union-attr]
