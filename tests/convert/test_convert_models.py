"""QAG on torchvision models with no per-model code: every exact Conv/Linear is quantized."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision import models

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.convert import quantizable_layers, quantized_layers
from lightning_autoq.nn import QUANT_LAYERS, QuantLayer

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = [
    pytest.param(lambda: models.resnet18(num_classes=10), 64, id="resnet18"),
    pytest.param(lambda: models.mobilenet_v2(num_classes=10), 64, id="mobilenet_v2"),
    pytest.param(lambda: models.efficientnet_b0(num_classes=10), 64, id="efficientnet_b0"),
    pytest.param(lambda: models.vit_b_16(image_size=32, num_classes=10), 32, id="vit_b_16"),
]


def _exact_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) in QUANT_LAYERS]


def _left_in_float(model: nn.Module) -> list[str]:
    """Weight-bearing modules convert cannot swap: attention blocks, subclasses of a layer."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        or (
            isinstance(m, tuple(QUANT_LAYERS))
            and type(m) not in QUANT_LAYERS
            and not isinstance(m, QuantLayer)
        )
    ]


@pytest.mark.parametrize(("build", "size"), MODELS)
def test_convert_torchvision_model(build, size):
    model = build()
    exact = _exact_layers(model)
    before = [name for name, _ in quantizable_layers(model)]
    assert before == exact and len(exact) > 2
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    left_in_float = _left_in_float(model)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert convert(model) is model
    messages = [str(w.message) for w in caught if "left in float" in str(w.message)]
    if attention:
        assert len(messages) == 1, messages
        message = messages[0]
        assert "MultiheadAttention" in message
        assert attention[0] in message
        assert f"{len(attention)} nn.MultiheadAttention" in message
        # Their inner out_proj (a Linear subclass) is covered by the block, not listed again.
        assert "out_proj" not in message
    else:
        assert not messages

    after = [name for name, _ in quantized_layers(model)]
    assert after == exact
    assert not [n for n, m in model.named_modules() if type(m) in QUANT_LAYERS]
    assert _left_in_float(model) == left_in_float

    default = LayerConfig()
    for i, (name, layer) in enumerate(quantized_layers(model)):
        edge = i in (0, len(after) - 1)
        expected_bits = 8 if edge else default.weight_bits
        assert layer.config.weight_bits == expected_bits, name
        assert layer.weight_quant.bits == expected_bits, name
        assert layer.act_quant.bits == (8 if edge else default.act_bits), name
        assert layer.config.scheme == default.scheme

    model.train()
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()  # linear in y: non-zero even where y == 0
    # Every quantized layer is on the gradient path (torchvision's ViT zero-initialises its
    # head, so only the head's own weight is sure to get a non-zero gradient).
    layers = [m for _, m in quantized_layers(model)]
    assert all(m.weight.grad is not None for m in layers)
    assert layers[-1].weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    learned = [p for _, m in quantized_layers(model) for p in m.weight_quant.parameters()]
    assert learned and all(p.grad is not None for p in learned)


def test_exclude_and_patterns_on_resnet18():
    model = models.resnet18(num_classes=10)
    policy = QuantPolicy(
        LayerConfig("clip", 3, 3),
        overrides={r"re:layer\d\.\d\.downsample\.0": {"weight_bits": 6}},
        exclude=["re:layer4.*"],
    )
    convert(model, policy)
    for name, m in model.named_modules():
        if type(m) in QUANT_LAYERS:
            assert name.startswith("layer4."), name
        elif isinstance(m, QuantLayer):
            assert not name.startswith("layer4.")
            if "downsample" in name:
                assert m.config.weight_bits == 6
    assert isinstance(model.fc, QuantLayer) and model.fc.config.weight_bits == 8
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(model(x)).all()
