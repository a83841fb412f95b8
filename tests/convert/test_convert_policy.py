"""``QuantPolicy``: YAML round trips, override precedence, errors that name the culprit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.convert import layer_configs, quantized_layers
from lightning_autoq.convert.policy import LAYER_FIELDS
from lightning_autoq.nn import QUANT_LAYERS

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["stem", "block.0", "block.1", "head.fc1", "head.fc2"]


def _model() -> nn.Module:
    return nn.ModuleDict(
        {
            "stem": nn.Conv2d(3, 4, 3),
            "block": nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)),
            "head": nn.ModuleDict({"fc1": nn.Linear(4, 4), "fc2": nn.Linear(4, 2)}),
        }
    )


RICH = QuantPolicy(
    default=LayerConfig("clip", 3, 5, granularity="channel", backward="ste", grad_ratio=0.5),
    first_last_bits=6,
    overrides={
        r"re:block\..*": {"scheme": "zoom", "act_bits": None},
        "head.fc1": {"weight_bits": 2, "bias_bits": None, "act_signed": True},
    },
    exclude=["block.1"],
)


def test_model_names():
    assert [n for n, m in _model().named_modules() if type(m) in QUANT_LAYERS] == NAMES


def test_yaml_round_trip():
    text = RICH.to_yaml()
    assert "head.fc1" in text and "re:block" in text
    back = QuantPolicy.from_yaml(text)
    assert back == RICH
    assert back.to_yaml() == text
    assert isinstance(back.default, LayerConfig)
    assert QuantPolicy.from_dict(RICH.to_dict()) == RICH
    assert QuantPolicy.from_yaml(QuantPolicy().to_yaml()) == QuantPolicy()
    assert QuantPolicy.from_yaml("") == QuantPolicy()


def test_save_and_load(tmp_path):
    path = tmp_path / "sub" / "policy.yaml"
    RICH.save(path)
    assert QuantPolicy.load(path) == RICH
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.yaml"]  # no temp file left
    assert QuantPolicy.load(path).resolve(NAMES) == RICH.resolve(NAMES)


def test_default_from_mapping():
    policy = QuantPolicy(default={"scheme": "clip", "weight_bits": 2})
    assert policy.default == LayerConfig("clip", 2)


def test_first_last_bits_and_default():
    configs = QuantPolicy(LayerConfig("clip", 3, 4)).resolve(NAMES)
    assert [c.weight_bits for c in configs.values()] == [8, 3, 3, 3, 8]
    assert [c.act_bits for c in configs.values()] == [8, 4, 4, 4, 8]
    plain = QuantPolicy(LayerConfig("clip", 3, None), first_last_bits=None).resolve(NAMES)
    assert all(c == LayerConfig("clip", 3, None) for c in plain.values())
    no_act = QuantPolicy(LayerConfig("clip", 3, None)).resolve(NAMES)
    assert no_act["stem"].act_bits is None and no_act["stem"].weight_bits == 8


def test_exact_name_beats_pattern_whatever_the_order():
    for overrides in (
        {"head.fc1": {"weight_bits": 2}, "re:head\\..*": {"weight_bits": 5}},
        {"re:head\\..*": {"weight_bits": 5}, "head.fc1": {"weight_bits": 2}},
    ):
        configs = QuantPolicy(LayerConfig("clip", 3), None, overrides).resolve(NAMES)
        assert configs["head.fc1"].weight_bits == 2
        assert configs["head.fc2"].weight_bits == 5


def test_patterns_apply_in_order():
    first = {"re:.*\\..*": {"weight_bits": 5}}
    second = {"re:head.*": {"weight_bits": 7}}
    a = QuantPolicy(LayerConfig("clip", 3), None, {**first, **second}).resolve(NAMES)
    b = QuantPolicy(LayerConfig("clip", 3), None, {**second, **first}).resolve(NAMES)
    assert a["head.fc1"].weight_bits == 7 and b["head.fc1"].weight_bits == 5
    assert a["block.0"].weight_bits == 5 == b["block.0"].weight_bits
    assert a["stem"].weight_bits == 3 == b["stem"].weight_bits


def test_patterns_fullmatch_and_merge_fields():
    policy = QuantPolicy(
        LayerConfig("clip", 3),
        None,
        {"re:block": {"weight_bits": 2}, "re:block.0": {"act_bits": 6}},
    )
    with pytest.raises(ValueError, match="'re:block'"):
        policy.resolve(NAMES)  # "block" alone is no layer name: fullmatch, not search
    policy = QuantPolicy(
        LayerConfig("clip", 3),
        None,
        {"re:block.*": {"weight_bits": 2}, "re:block.0": {"act_bits": 6}},
    )
    configs = policy.resolve(NAMES)
    assert (configs["block.0"].weight_bits, configs["block.0"].act_bits) == (2, 6)
    assert (configs["block.1"].weight_bits, configs["block.1"].act_bits) == (2, 4)


def test_overrides_beat_first_last_bits():
    configs = QuantPolicy(LayerConfig("clip", 3), 8, {"stem": {"weight_bits": 2}}).resolve(NAMES)
    assert configs["stem"].weight_bits == 2 and configs["stem"].act_bits == 8


@pytest.mark.parametrize("field", ["overrides", "exclude"])
@pytest.mark.parametrize("key", ["head.fc3", "re:decoder.*"])
def test_key_matching_no_layer_raises_naming_key_and_layers(field, key):
    kwargs = (
        {"overrides": {key: {"weight_bits": 2}}} if field == "overrides" else {"exclude": [key]}
    )
    policy = QuantPolicy(LayerConfig("clip", 3), **kwargs)
    with pytest.raises(ValueError) as info:
        policy.resolve(NAMES)
    message = str(info.value)
    assert repr(key) in message
    for name in NAMES:
        assert name in message


def test_unknown_override_field_names_allowed_fields():
    with pytest.raises(ValueError) as info:
        QuantPolicy(overrides={"stem": {"wieght_bits": 2}})
    message = str(info.value)
    assert "wieght_bits" in message and "'stem'" in message
    for field in LAYER_FIELDS:
        assert field in message


def test_override_must_be_a_mapping():
    with pytest.raises(ValueError, match="'stem'"):
        QuantPolicy(overrides={"stem": 4})


def test_invalid_bits_for_scheme_names_the_layer():
    with pytest.raises(ValueError) as info:
        QuantPolicy(LayerConfig("clip", 3), overrides={"head.fc1": {"weight_bits": 9}})
    assert "'head.fc1'" in str(info.value) and "bits=9" in str(info.value)
    # Valid on its own, invalid once combined with first_last_bits on the last layer.
    policy = QuantPolicy(
        LayerConfig("clip", 3, 3),
        first_last_bits=8,
        overrides={"re:head.*": {"scheme": "power_of_two"}},
    )
    with pytest.raises(ValueError) as info:
        policy.resolve(NAMES)
    message = str(info.value)
    assert "'head.fc2'" in message and "bits=8" in message and "power_of_two" in message


def test_first_last_bits_incompatible_with_scheme_is_explained():
    policy = QuantPolicy(LayerConfig("binary", 1, 1))
    with pytest.raises(ValueError) as info:
        convert(_model(), policy)
    message = str(info.value)
    assert "'stem'" in message and "first_last_bits" in message and "binary" in message
    # The two ways out named by the message both work.
    convert(_model(), dataclasses.replace(policy, first_last_bits=None))
    fixed = dataclasses.replace(
        policy,
        overrides={
            "stem": {"scheme": "fixed_point", "weight_bits": 8, "act_bits": 8},
            "head.fc2": {"scheme": "fixed_point", "weight_bits": 8, "act_bits": 8},
        },
    )
    configs = layer_configs(convert(_model(), fixed))
    assert configs["stem"].scheme == "fixed_point" and configs["block.0"].scheme == "binary"


def test_invalid_pattern_and_fields():
    with pytest.raises(ValueError, match="invalid pattern"):
        QuantPolicy(exclude=["re:("])
    with pytest.raises(ValueError, match="granularity='row'"):
        LayerConfig(granularity="row")
    with pytest.raises(ValueError, match="backward='up'"):
        LayerConfig(backward="up")
    with pytest.raises(ValueError, match="unknown policy field"):
        QuantPolicy.from_dict({"defaults": {}})
    with pytest.raises(ValueError, match="'nope'"):
        LayerConfig("clip", 3, act_scheme="nope")
    with pytest.raises(ValueError, match="bias"):
        LayerConfig(bias_scheme="lsq", bias_bits=1)


def test_empty_names():
    with pytest.raises(ValueError, match="no quantizable layer"):
        QuantPolicy().resolve([])


def test_exclude_leaves_layers_float():
    model = convert(_model(), RICH)
    assert type(model["block"][1]) is nn.Conv2d
    assert [n for n, _ in quantized_layers(model)] == [n for n in NAMES if n != "block.1"]
    configs = RICH.resolve(NAMES)
    assert configs["block.1"] is None
    x = torch.randn(1, 3, 8, 8)
    model["head"]["fc2"](model["head"]["fc1"](model["block"](model["stem"](x)).mean((2, 3))))


def test_rich_policy_resolution():
    configs = RICH.resolve(NAMES)
    assert configs["stem"] == RICH.default.replace(weight_bits=6, act_bits=6)
    assert configs["block.0"] == RICH.default.replace(scheme="zoom", act_bits=None)
    assert configs["head.fc1"] == RICH.default.replace(
        weight_bits=2, bias_bits=None, act_signed=True
    )
    assert configs["head.fc2"] == RICH.default.replace(weight_bits=6, act_bits=6)


def test_explicit_policy_reproduces_layer_configs():
    model = convert(_model(), RICH)
    configs = layer_configs(model)
    explicit = QuantPolicy.explicit(configs)
    assert explicit.first_last_bits is None
    assert explicit.resolve(list(configs)) == configs
    assert QuantPolicy.from_yaml(explicit.to_yaml()).resolve(list(configs)) == configs
    # With the excluded layer named as None, it stays excluded on the full model.
    full = {**configs, "block.1": None}
    explicit_full = QuantPolicy.explicit(full)
    assert explicit_full.resolve(NAMES) == {n: full[n] for n in NAMES}
    # Applying the explicit policy to the converted model changes nothing.
    modules = dict(model.named_modules())
    convert(model, explicit_full)
    assert all(m is modules[n] for n, m in model.named_modules())


def test_explicit_needs_a_quantized_layer():
    with pytest.raises(ValueError, match="at least one"):
        QuantPolicy.explicit({"stem": None})


def test_scheme_options_are_validated_round_trip_and_reach_convert() -> None:
    with pytest.raises(
        ValueError, match=r"unknown scheme option\(s\) \['cands'\].*allowed: candidates"
    ):
        LayerConfig("int_se", 4, 4, scheme_options={"cands": 2})
    with pytest.raises(ValueError, match=r"\['candidates'\] for scheme 'clip'; allowed: none"):
        LayerConfig("clip", 4, 4, scheme_options={"candidates": 2})
    with pytest.raises(ValueError, match="candidates=0 is not allowed"):
        LayerConfig("int_se", 4, 4, scheme_options={"candidates": 0})
    with pytest.raises(ValueError, match=r"override 'b': unknown scheme option"):
        QuantPolicy(overrides={"b": {"scheme": "int_se", "scheme_options": {"nope": 1}}})
    policy = QuantPolicy(
        LayerConfig("int_se", 4, 4, scheme_options={"candidates": 2}),
        first_last_bits=None,
        overrides={"2": {"scheme_options": {"candidates": 1}}},
    )
    assert QuantPolicy.from_yaml(policy.to_yaml()) == policy
    assert "candidates: 2" in policy.to_yaml()
    net = convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), policy)
    assert net[0].weight_quant.scheme.candidates == 2
    assert net[0].act_quant.scheme.candidates == 2
    assert net[2].weight_quant.scheme.candidates == 1
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 4, 4, 4)
    # Changing only the options rebuilds the layer; the explicit policy records them.
    explicit = QuantPolicy.explicit({"0": net[0].config, "2": net[2].config})
    assert explicit.overrides == {"2": {"scheme_options": {"candidates": 1}}}
