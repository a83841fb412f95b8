"""``convert`` / ``restore_float``: idempotence, selective rebuilds, copies, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy, convert, restore_float
from lightning_autoq.convert import layer_configs, quantizable_layers, quantized_layers
from lightning_autoq.nn import QUANT_LAYERS, QuantLayer

pytestmark = pytest.mark.usefixtures("single_thread")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1, bias=False)
        )
        self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


NAMES = ["stem", "block.0", "block.2", "head.0", "head.2"]
POLICY = QuantPolicy(LayerConfig("clip", 3, 4), overrides={"block.2": {"scheme": "zoom"}})


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 6, 6)


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_quantizable_layer_names():
    assert [n for n, _ in quantizable_layers(Tiny())] == NAMES


def test_convert_twice_keeps_objects_and_quantizer_state():
    model = convert(Tiny(), POLICY)
    model(_x())
    model(_x())  # running statistics away from their first values
    before_modules, before_state = _modules(model), _state(model)
    again = QuantPolicy.from_yaml(POLICY.to_yaml())
    assert convert(model, again) is model
    after = _modules(model)
    assert after.keys() == before_modules.keys()
    for name, module in after.items():
        assert module is before_modules[name], name
    _assert_same_state(before_state, _state(model))


def test_different_policy_rebuilds_only_changed_layers():
    model = convert(Tiny(), POLICY)
    model(_x())
    before = _modules(model)
    weights = {n: before[n].weight for n in NAMES}
    changed = QuantPolicy(
        POLICY.default, overrides={**POLICY.overrides, "head.0": {"weight_bits": 2}}
    )
    convert(model, changed)
    after = _modules(model)
    for name in NAMES:
        assert after[name].weight is weights[name], name  # optimizer references stay valid
        if name == "head.0":
            assert after[name] is not before[name]
            assert after[name].config.weight_bits == 2
            assert not bool(after[name].act_quant.initialized)  # fresh quantizer state
        else:
            assert after[name] is before[name], name
            assert after[name].weight_quant is before[name].weight_quant


def test_excluding_on_reconvert_restores_float_layer():
    model = convert(Tiny(), POLICY)
    weight = model.block[0].weight
    convert(model, QuantPolicy(POLICY.default, overrides=POLICY.overrides, exclude=["block.0"]))
    assert type(model.block[0]) is nn.Conv2d and model.block[0].weight is weight
    assert isinstance(model.block[2], QuantLayer)


def test_inplace_false_leaves_original_untouched():
    original = Tiny().eval()
    x = _x()
    expected = original(x)
    state = _state(original)
    types = {n: type(m) for n, m in original.named_modules()}
    converted = convert(original, POLICY, inplace=False)
    assert converted is not original
    converted.train()
    converted(x)
    assert {n: type(m) for n, m in original.named_modules()} == types
    _assert_same_state(state, _state(original))
    assert torch.equal(original(x), expected)
    assert not quantized_layers(original)
    assert [n for n, _ in quantized_layers(converted)] == NAMES
    assert converted.stem.weight is not original.stem.weight


def test_restore_float_gives_back_equal_outputs():
    model = Tiny().eval()
    x = _x()
    expected = model(x)
    keys = set(model.state_dict())
    convert(model, POLICY)
    quantized = model(x)
    assert not torch.equal(quantized, expected)
    assert restore_float(model) is model
    assert not quantized_layers(model)
    assert all(type(m) is QUANT_LAYERS[type(m)].float_class for _, m in quantizable_layers(model))
    assert set(model.state_dict()) == keys
    assert torch.equal(model(x), expected)


def test_model_without_quantizable_layers_raises():
    with pytest.raises(ValueError, match="no quantizable layer") as info:
        convert(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    assert "Conv2d" in str(info.value) and "Linear" in str(info.value)

    class LinearSubclass(nn.Linear):
        pass

    with pytest.raises(ValueError, match="no quantizable layer"):
        convert(nn.Sequential(LinearSubclass(2, 2)))


def test_policy_that_does_not_fit_raises_before_changing_the_model():
    model = Tiny()
    with pytest.raises(ValueError, match="'decoder'"):
        convert(model, QuantPolicy(overrides={"decoder": {"weight_bits": 2}}))
    assert not quantized_layers(model)


def test_layer_configs_report_each_layer():
    model = convert(Tiny(), POLICY)
    configs = layer_configs(model)
    assert list(configs) == NAMES
    assert configs["block.2"].scheme == "zoom"
    assert configs["stem"].weight_bits == 8 and configs["block.0"].weight_bits == 3
    for name, cfg in configs.items():
        assert model.get_submodule(name).config is cfg


def test_converted_model_trains_and_deepcopies():
    model = convert(Tiny(), POLICY)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, target = _x(), torch.randn(2, 4)
    start = copy.deepcopy(model.state_dict())
    for _ in range(2):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()
    assert not torch.equal(model.stem.weight, start["stem.weight"])
    clone = copy.deepcopy(model).eval()
    model.eval()
    assert torch.equal(clone(x), model(x))
