"""The Quantize callback inside a real Trainer: conversion timing, resume, logging."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks import Quantize
from lightning_autoq.convert import quantized_layers
from lightning_autoq.nn import QuantLayer
from tests.callbacks.tiny import POLICY, TinyNet, tiny_loader


def _trainer(tmp_path: Path, epochs: int, policy: QuantPolicy = POLICY, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    return L.Trainer(
        max_epochs=epochs,
        callbacks=[Quantize(policy)],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def test_converts_before_optimizers_and_trains(tmp_path: Path) -> None:
    L.seed_everything(0)
    module = TinyNet()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    _trainer(tmp_path, 1, enable_checkpointing=False).fit(module, tiny_loader())
    layers = quantized_layers(module.model)
    assert [n for n, _ in layers] == ["0", "3", "6"]
    # The optimizer was built after conversion: it holds every quantizer parameter.
    quant_params = [p for _, layer in layers for p in layer.weight_quant.parameters()]
    assert quant_params and all(id(p) in module.seen_optimizer_params for p in quant_params)
    # Weights and learned steps moved; the running activation range of model.3 was filled.
    assert not torch.equal(before["model.0.weight"], module.model[0].weight)
    assert bool(module.model[3].act_quant.initialized)
    assert module.model[3].act_quant.range_mode == "running"
    # First and last layers at 8 bits, the middle one per its override.
    assert [layer.config.weight_bits for _, layer in layers] == [8, 4, 8]
    assert module.model[3].config.scheme == "clip"
    assert module.model[3].act_quant.bits == 3


def test_setup_is_idempotent_across_stages(tmp_path: Path) -> None:
    module = TinyNet()
    trainer = _trainer(tmp_path, 1, enable_checkpointing=False)
    trainer.fit(module, tiny_loader())
    layer = module.model[0]
    scale = layer.weight_quant.scale.detach().clone()
    trainer.test(module, tiny_loader())
    assert module.model[0] is layer
    assert torch.equal(layer.weight_quant.scale, scale)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_gives_identical_weights_and_quantizer_state(tmp_path: Path) -> None:
    L.seed_everything(0)
    straight = TinyNet()
    _trainer(tmp_path / "a", 4, enable_checkpointing=False).fit(straight, tiny_loader())

    L.seed_everything(0)
    first = TinyNet()
    _trainer(tmp_path / "b", 2).fit(first, tiny_loader())
    ckpt = next((tmp_path / "b" / "checkpoints").glob("*.ckpt"))
    L.seed_everything(0)
    resumed = TinyNet()
    _trainer(tmp_path / "c", 4).fit(resumed, tiny_loader(), ckpt_path=ckpt)

    expected, got = _state(straight), _state(resumed)
    assert expected.keys() == got.keys()
    assert any("act_quant.scale" in k for k in got) and any(
        "act_quant.signed_state" in k for k in got
    )
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_quantized_checkpoint_loads_for_test_stage(tmp_path: Path) -> None:
    L.seed_everything(0)
    module = TinyNet()
    trainer = _trainer(tmp_path, 1)
    trainer.fit(module, tiny_loader())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    fresh = TinyNet()  # float: the callback converts it before the strict restore
    _trainer(tmp_path, 1).test(fresh, tiny_loader(), ckpt_path=ckpt, verbose=False)
    assert isinstance(fresh.model[0], QuantLayer)
    for key, value in _state(module).items():
        assert torch.equal(value, fresh.state_dict()[key]), key


def test_resume_with_another_policy_is_refused(tmp_path: Path) -> None:
    _trainer(tmp_path, 1).fit(TinyNet(), tiny_loader())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    # Same state-dict keys, other bits: only the callback's own check can notice.
    fewer_bits = QuantPolicy(
        LayerConfig("lsq", weight_bits=3, act_bits=3), overrides=POLICY.overrides
    )
    with pytest.raises(ValueError, match="another quantization policy"):
        _trainer(tmp_path, 2, policy=fewer_bits).fit(TinyNet(), tiny_loader(), ckpt_path=ckpt)
    # Other schemes change the quantizer state: the strict model load names the keys.
    other = QuantPolicy(LayerConfig("clip", weight_bits=2, act_bits=2))
    with pytest.raises(RuntimeError, match=r"Unexpected key.*weight_quant\.scale"):
        _trainer(tmp_path, 2, policy=other).fit(TinyNet(), tiny_loader(), ckpt_path=ckpt)


def test_logs_layer_table_to_csv_logger(tmp_path: Path) -> None:
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    module = TinyNet()
    _trainer(tmp_path, 1, logger=logger, enable_checkpointing=False).fit(module, tiny_loader())
    with (Path(logger.log_dir) / "autoq_layers.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["layer", "type", "scheme", "weight_bits"]
    assert [r[0] for r in rows[1:]] == ["model.0", "model.3", "model.6"]
    assert [r[3] for r in rows[1:]] == ["8", "4", "8"]


def test_module_name_limits_conversion(tmp_path: Path) -> None:
    module = TinyNet()
    module.head = nn.Linear(3, 3)  # outside the target: must stay float
    # Policy keys are names inside the target module.
    relative = QuantPolicy(overrides={"3": {"weight_bits": 2}})
    Quantize(relative, module_name="model").setup(_trainer(tmp_path, 1), module, "fit")
    assert isinstance(module.model[0], QuantLayer)
    assert module.model[3].config.weight_bits == 2
    assert type(module.head) is nn.Linear
    with pytest.raises(ValueError, match=r"module_name='nope'.*children: model, head"):
        Quantize(module_name="nope").setup(_trainer(tmp_path, 1), module, "fit")


def test_rejects_non_policy() -> None:
    with pytest.raises(TypeError, match="QuantPolicy"):
        Quantize(policy={"default": {}})  # type: ignore[arg-type]
