"""BN folding: equal eval outputs, pairs found by fx, locked layers quantize folded weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.convert import convert
from lightning_autoq.export import find_bn_pairs, fold_batchnorm
from lightning_autoq.models import CifarResNet


def _trained_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.2, 3.0)


@pytest.mark.parametrize("bias", [False, True])
def test_folding_preserves_eval_outputs_conv(bias: bool) -> None:
    conv, bn = nn.Conv2d(3, 5, 3, bias=bias), nn.BatchNorm2d(5)
    _trained_bn(bn)
    ref = nn.Sequential(conv, bn).eval()
    x = torch.randn(2, 3, 7, 7)
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    out = nn.functional.conv2d(x, w, b)
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)


def test_folding_preserves_eval_outputs_linear() -> None:
    lin, bn = nn.Linear(4, 6), nn.BatchNorm1d(6)
    _trained_bn(bn)
    x = torch.randn(8, 4)
    w, b = fold_batchnorm(lin.weight, lin.bias, bn)
    torch.testing.assert_close(
        nn.functional.linear(x, w, b), nn.Sequential(lin, bn).eval()(x), rtol=1e-5, atol=1e-5
    )


def _quantized_resnet() -> nn.Module:
    net = CifarResNet(depth=8, in_channels=1, width=4, shortcut="B")
    return convert(net, QuantPolicy(LayerConfig("int_se", 4, 4)))


def test_pairs_found_in_resnet() -> None:
    pairs = dict(find_bn_pairs(_quantized_resnet()))
    # stem + 2 convs per block (3 blocks) + 2 projection shortcuts; the classifier has no BN.
    assert len(pairs) == 1 + 6 + 2
    assert pairs["conv1"] == "bn1"
    assert pairs["layer1.0.conv2"] == "layer1.0.bn2"
    assert pairs["layer2.0.shortcut.0"] == "layer2.0.shortcut.1"


def test_no_pair_when_the_conv_output_has_another_user() -> None:
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert find_bn_pairs(convert(TwoUsers(), QuantPolicy(LayerConfig("int_se", 4, 4)))) == []


def test_untraceable_model_raises_clear_error() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(ValueError, match=r"cannot trace Dynamic .*exclude"):
        find_bn_pairs(convert(Dynamic(), QuantPolicy(LayerConfig("int_se", 4, 4))))


@pytest.mark.parametrize("scheme", [None, "int_se"])
def test_locked_layer_equals_conv_bn_in_eval(scheme: str | None) -> None:
    conv, bn = nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)
    _trained_bn(bn)
    model = nn.Sequential(conv, bn, nn.ReLU())
    x = torch.randn(2, 3, 7, 7)
    ref = model.eval()(x)
    policy = QuantPolicy(LayerConfig(scheme or "int_se", 8, None, bias_bits=8))
    convert(model, policy if scheme else QuantPolicy(LayerConfig("int_se", 8, None)))
    layer = model[0]
    layer.attach_batchnorm(bn)
    assert "bn_locked" in dict(layer.named_buffers())
    layer.bn_locked.fill_(True)
    model.train()
    stats = bn.running_mean.clone(), bn.running_var.clone()
    out_train = model(x)  # locked: BN statistics are frozen even in train mode
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    model.eval()
    out = model(x)
    assert torch.equal(out, out_train)
    # What is quantized is the folded weight and bias.
    w, b = fold_batchnorm(conv.weight, None, bn)
    qw = layer.weight_quant(w)
    qb = layer.bias_quant(b)
    assert torch.equal(out, torch.relu(nn.functional.conv2d(x, qw, qb)))
    # At 8 bits the quantized folded layer is close to the float conv -> BN.
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    # gamma and beta still get gradients through the folded expression.
    model.train()
    model(x).sum().backward()
    assert bn.weight.grad is not None and bn.bias.grad is not None


def test_attach_keeps_parameter_names_and_is_idempotent() -> None:
    model = convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), QuantPolicy())
    keys = set(model.state_dict())
    model[0].attach_batchnorm(model[1])
    model[0].attach_batchnorm(model[1])
    assert set(model.state_dict()) == keys | {"0.bn_locked"}
    with pytest.raises(ValueError, match="already paired"):
        model[0].attach_batchnorm(nn.BatchNorm2d(2))


def test_deepcopy_keeps_each_copy_tied_to_its_own_layer() -> None:
    import copy

    model = convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), QuantPolicy())
    model[0].attach_batchnorm(model[1])
    clone = copy.deepcopy(model)
    assert clone[0].batchnorm is clone[1]
    clone[0].bn_locked.fill_(True)
    x = torch.randn(2, 1, 5, 5)
    model.eval(), clone.eval()
    assert torch.equal(clone(x), clone[0](x))  # the clone's BN passes through
    assert not torch.equal(model(x), model[0](x))  # the original is still unlocked
