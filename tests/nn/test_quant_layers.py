"""Every quantized layer type in ``QUANT_LAYERS``: conversion both ways, state, exact forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lightning_autoq import LayerConfig
from lightning_autoq.nn import QUANT_LAYERS, QuantConvTranspose2d, QuantLayer
from lightning_autoq.quant import make_scheme
from lightning_autoq.quant.schemes.base import reduce_all_but

pytestmark = pytest.mark.usefixtures("single_thread")

PAIRS = [pytest.param(f, q, id=f.__name__) for f, q in QUANT_LAYERS.items()]
QUANT_KEYS = ("weight_quant.", "act_quant.", "bias_quant.")


def _make_float(float_cls: type[nn.Module], bias: bool = True) -> nn.Module:
    """A small instance of any supported float layer (conv family or linear)."""
    if issubclass(float_cls, nn.Linear):
        return float_cls(6, 5, bias=bias)
    return float_cls(4, 6, kernel_size=3, stride=2, padding=1, bias=bias)


def _input(layer: nn.Module, batch: int = 2) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.randn(batch, 3, layer.in_features)
    spatial = len(layer.kernel_size)
    return torch.randn(batch, layer.in_channels, *([7] * spatial))


def _quant_params(layer: QuantLayer) -> dict[str, torch.Tensor]:
    params = {"weight": layer.quantized_weight()}
    if layer.bias is not None:
        params["bias"] = layer.bias_quant(layer.bias) if layer.bias_quant else layer.bias
    return params


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_registry_maps_float_class(float_cls, quant_cls):
    assert quant_cls.float_class is float_cls
    assert issubclass(quant_cls, float_cls) and issubclass(quant_cls, QuantLayer)


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
@pytest.mark.parametrize("bias", [True, False])
def test_from_float_keeps_names_and_tensor_objects(float_cls, quant_cls, bias):
    fl = _make_float(float_cls, bias)
    ql = quant_cls.from_float(fl, LayerConfig())
    assert type(ql) is quant_cls
    own = dict(fl.named_parameters())
    quant_own = dict(ql.named_parameters(recurse=False))
    assert own.keys() == quant_own.keys()
    for name, p in own.items():
        assert quant_own[name] is p
    assert (ql.bias is None) == (not bias)
    assert (ql.bias_quant is None) == (not bias)
    assert ql.weight.device == fl.weight.device and not ql.weight.is_meta
    # Gradients reach the shared float parameters.
    ql(_input(fl)).sum().backward()
    assert fl.weight.grad is not None and fl.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_from_float_copies_hyperparameters_and_mode(float_cls, quant_cls):
    fl = _make_float(float_cls).eval()
    ql = quant_cls.from_float(fl, LayerConfig())
    assert not ql.training
    for attr in ("in_features", "out_features", "kernel_size", "stride", "padding", "groups"):
        assert getattr(ql, attr, None) == getattr(fl, attr, None)


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_float_state_dict_loads_into_quantized_layer(float_cls, quant_cls):
    fl = _make_float(float_cls)
    ql = quant_cls.from_float(copy.deepcopy(fl), LayerConfig())
    float_sd, quant_sd = fl.state_dict(), ql.state_dict()
    assert set(float_sd) <= set(quant_sd)
    for key, value in float_sd.items():
        assert torch.equal(quant_sd[key], value)
    extra = set(quant_sd) - set(float_sd)
    assert extra and all(k.startswith(QUANT_KEYS) for k in extra)
    # Another float layer's weights load; only quantizer keys are missing.
    other = _make_float(float_cls)
    result = ql.load_state_dict(other.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == extra
    for key, value in other.state_dict().items():
        assert torch.equal(ql.state_dict()[key], value)


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_quantized_state_dict_round_trip(float_cls, quant_cls):
    config = LayerConfig("clip", 3, 3, granularity="channel")
    ql = quant_cls.from_float(_make_float(float_cls), config)
    x = _input(ql)
    ql(x)
    ql(x * 2)
    ql.eval()
    fresh = quant_cls.from_float(_make_float(float_cls), config).eval()
    fresh.load_state_dict(ql.state_dict())  # strict
    assert torch.equal(fresh(x), ql(x))


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_to_float_gives_back_the_float_layer(float_cls, quant_cls):
    fl = _make_float(float_cls)
    x = _input(fl)
    expected = fl(x)
    ql = quant_cls.from_float(fl, LayerConfig("clip", 2, 2))
    ql(x)
    back = ql.to_float()
    assert type(back) is float_cls
    assert back.weight is fl.weight and back.bias is fl.bias
    assert not any(isinstance(m, QuantLayer) for m in back.modules())
    assert set(back.state_dict()) == set(fl.state_dict())
    assert torch.equal(back(x), expected)


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_8bit_weights_close_to_float_within_half_step(float_cls, quant_cls):
    """Zoom keeps min and max as levels: every weight moves by at most half a step, so each
    output moves by at most ``sum |x| * step / 2`` over its receptive field."""
    fl = _make_float(float_cls)
    config = LayerConfig("zoom", 8, act_bits=None, bias_bits=None)
    ql = quant_cls.from_float(copy.deepcopy(fl), config)
    x = _input(fl)
    w = fl.weight.detach()
    step = (w.max() - w.min()) / (2**8 - 1)
    wq = ql.quantized_weight().detach()
    assert (wq - w).abs().max() <= step / 2 * (1 + 1e-5)
    assert not torch.equal(wq, w)  # the weights really are quantized
    bound_layer = copy.deepcopy(fl)
    with torch.no_grad():
        bound_layer.weight.fill_(float(step) / 2)
        bound_layer.bias.zero_()
        bound = bound_layer(x.abs())
    with torch.no_grad():
        y_float, y_quant = fl(x), ql(x)
    error = (y_quant - y_float).abs()
    assert (error <= bound + 1e-5 * y_float.abs() + 1e-6).all()
    assert error.max() > 0
    # Float input, float bias: exactly the float op on the fake-quantized weight.
    with torch.no_grad():
        expected = functional_call(fl, {"weight": wq, "bias": fl.bias}, (x,))
    assert torch.equal(y_quant, expected)


def test_forward_equals_torch_functional_ops():
    """The same check spelled with ``F.conv2d`` / ``F.linear`` themselves."""
    conv = QUANT_LAYERS[nn.Conv2d].from_float(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1), LayerConfig("clip", 4, 5)
    )
    x = torch.randn(2, 3, 9, 9)
    conv(x)
    conv.eval()
    with torch.no_grad():
        xq, wq, bq = conv.act_quant(x), conv.quantized_weight(), conv.bias_quant(conv.bias)
        expected = F.conv2d(xq, wq, bq, stride=2, padding=1)
        assert torch.equal(conv(x), expected)
    lin = QUANT_LAYERS[nn.Linear].from_float(nn.Linear(5, 3), LayerConfig("lsq", 3, 3))
    x = torch.randn(4, 5)
    lin(x)
    with torch.no_grad():
        xq, wq, bq = lin.act_quant(x), lin.quantized_weight(), lin.bias_quant(lin.bias)
        assert torch.equal(lin(x), F.linear(xq, wq, bq))


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
@pytest.mark.parametrize(
    "config",
    [
        LayerConfig(),  # lsq, learned steps, bias in fixed point
        LayerConfig("clip", 3, 4, granularity="channel", act_signed=True),
        LayerConfig("int_se", 8, 8, bias_bits=None),
    ],
    ids=["lsq", "clip-channel", "int_se"],
)
def test_forward_equals_functional_on_fake_quantized_tensors(float_cls, quant_cls, config):
    fl = _make_float(float_cls)
    ql = quant_cls.from_float(copy.deepcopy(fl), config)
    x = _input(fl)
    ql(x)  # initialises running or learned parameters
    ql.eval()
    y = ql(x)
    with torch.no_grad():
        xq = ql.act_quant(x)
        expected = functional_call(fl, _quant_params(ql), (xq,))
    assert torch.equal(y, expected)
    assert not torch.equal(xq, x)
    # Zero tolerance in training mode too (weights dynamic or learned, input re-estimated).
    ql.train()
    probe = copy.deepcopy(ql)
    y_train = ql(x)
    xq_train = probe.act_quant(x)
    expected_train = functional_call(fl, _quant_params(probe), (xq_train,))
    assert torch.equal(y_train, expected_train)


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_per_channel_weight_axis(float_cls, quant_cls):
    fl = _make_float(float_cls)
    ql = quant_cls.from_float(fl, LayerConfig("clip", 4, None, granularity="channel"))
    axis = ql.weight_quant.channel_axis
    out_channels = fl.out_features if isinstance(fl, nn.Linear) else fl.out_channels
    assert ql.weight.shape[axis] == out_channels == ql.weight_quant.channels
    w = fl.weight.detach()
    scheme = make_scheme("clip", 4)
    est = scheme.estimate(w, True, reduce_all_but(w, axis))
    assert torch.equal(ql.quantized_weight(), scheme.quantize(w, est, True))


def test_conv_transpose2d_per_channel_axis_1_and_output_size():
    fl = nn.ConvTranspose2d(3, 5, kernel_size=3, stride=2, padding=1)
    assert fl.weight.shape[:2] == (3, 5)  # (in, out, kh, kw)
    ql = QuantConvTranspose2d.from_float(
        copy.deepcopy(fl), LayerConfig("clip", 4, 4, granularity="channel", act_signed=True)
    )
    assert ql.weight_quant.channel_axis == 1 and ql.weight_quant.channels == 5
    params = ql.weight_quant.parameters_for(ql.weight)
    assert params["scale"].shape == (1, 5, 1, 1)
    x = torch.randn(2, 3, 4, 4)
    default = ql(x)
    assert default.shape == fl(x).shape == (2, 5, 7, 7)
    ql.eval()
    y = ql(x, output_size=[8, 8])
    assert y.shape == (2, 5, 8, 8)
    with torch.no_grad():
        expected = functional_call(
            fl, _quant_params(ql), (ql.act_quant(x),), {"output_size": [8, 8]}
        )
    assert torch.equal(y, expected)


class _Conv2dSubclass(nn.Conv2d):
    pass


@pytest.mark.parametrize(("float_cls", "quant_cls"), PAIRS)
def test_from_float_rejects_wrong_type(float_cls, quant_cls):
    others = [f for f in QUANT_LAYERS if f is not float_cls]
    with pytest.raises(TypeError, match=float_cls.__name__):
        quant_cls.from_float(_make_float(others[0]), LayerConfig())
    with pytest.raises(TypeError):
        quant_cls.from_float(nn.ReLU(), LayerConfig())


def test_from_float_rejects_subclass_and_quantized_layer():
    with pytest.raises(TypeError):
        QUANT_LAYERS[nn.Conv2d].from_float(_Conv2dSubclass(2, 2, 1), LayerConfig())
    ql = QUANT_LAYERS[nn.Conv2d].from_float(nn.Conv2d(2, 2, 1), LayerConfig())
    with pytest.raises(TypeError):
        QUANT_LAYERS[nn.Conv2d].from_float(ql, LayerConfig())


def test_quantizers_follow_the_config():
    fl = nn.Conv2d(3, 8, 3)
    config = LayerConfig("clip", 3, 5, act_scheme="fixed_point", granularity="channel", bias_bits=6)
    ql = QUANT_LAYERS[nn.Conv2d].from_float(fl, config)
    assert ql.config == config
    assert (ql.weight_quant.scheme.name, ql.weight_quant.bits) == ("clip", 3)
    assert ql.weight_quant.channels == 8
    assert (ql.act_quant.scheme.name, ql.act_quant.bits, ql.act_quant.kind) == (
        "fixed_point",
        5,
        "activation",
    )
    assert (ql.bias_quant.scheme.name, ql.bias_quant.bits) == ("fixed_point", 6)
    none = QUANT_LAYERS[nn.Conv2d].from_float(
        nn.Conv2d(3, 8, 3), LayerConfig("clip", 3, None, bias_bits=None)
    )
    assert none.act_quant is None and none.bias_quant is None
