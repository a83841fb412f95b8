"""IncrementalQuantization inside a real Trainer: schedule, frozen entries, resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks import Quantize
from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock
from lightning_autoq.callbacks.incremental import IncrementalQuantization
from lightning_autoq.convert import quantized_layers
from lightning_autoq.quant.incremental import IncrementalWeight
from tests.callbacks.tiny import TinyNet, tiny_loader

INT_SE = QuantPolicy(LayerConfig("int_se", weight_bits=4, act_bits=4))


class Probe(L.Callback):
    """Records each layer's fraction and effective weight at epoch start and end."""

    def __init__(self) -> None:
        self.fractions: list[list[float]] = []
        self.start: list[list[torch.Tensor]] = []
        self.masks: list[list[torch.Tensor]] = []
        self.end: list[list[torch.Tensor]] = []

    @staticmethod
    def _weights(pl_module) -> list[torch.Tensor]:
        return [lay.quantized_weight().detach().clone() for _, lay in quantized_layers(pl_module)]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        wrappers = [lay.weight_quant for _, lay in quantized_layers(pl_module)]
        self.fractions.append([w.quantized_fraction() for w in wrappers])
        self.masks.append([w.mask.clone() for w in wrappers])
        self.start.append(self._weights(pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end.append(self._weights(pl_module))


def _fit(tmp_path: Path, epochs: int, iq: IncrementalQuantization, ckpt=None, **kwargs):
    L.seed_everything(0)
    module, probe = TinyNet(), Probe()
    kwargs.setdefault("enable_checkpointing", False)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[Quantize(INT_SE), iq, probe],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(module, tiny_loader(), ckpt_path=ckpt)
    return module, probe


def test_fraction_follows_schedule_and_frozen_entries_stay_fixed(tmp_path: Path) -> None:
    module, probe = _fit(tmp_path, 5, IncrementalQuantization(start_epoch=1))
    layers = quantized_layers(module)
    assert all(isinstance(lay.weight_quant, IncrementalWeight) for _, lay in layers)
    numels = [lay.weight.numel() for _, lay in layers]
    for epoch, expected in enumerate([0.0, 0.5, 0.75, 0.875, 1.0]):
        for got, n in zip(probe.fractions[epoch], numels, strict=True):
            assert abs(got - expected) <= 0.5 / n + 1e-6  # count rounded half up
    for epoch in range(1, 5):
        for mask, start, end in zip(
            probe.masks[epoch], probe.start[epoch], probe.end[epoch], strict=True
        ):
            assert torch.equal(end[mask], start[mask])  # frozen: bit-identical
            if not mask.all():
                assert not torch.equal(end[~mask], start[~mask])  # the rest trains
    # The masks only grow.
    for before, after in zip(probe.masks[1:], probe.masks[2:], strict=False):
        assert all(bool((a | ~b).all()) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_resume_mid_schedule_gives_the_same_masks(tmp_path: Path, strategy: str) -> None:
    schedule = [0.25, 0.5, 0.75, 1.0]
    straight, _ = _fit(tmp_path / "a", 3, IncrementalQuantization(schedule, strategy))
    _fit(tmp_path / "b", 2, IncrementalQuantization(schedule, strategy), enable_checkpointing=True)
    ckpt = next((tmp_path / "b").rglob("*.ckpt"))
    resumed, probe = _fit(tmp_path / "c", 3, IncrementalQuantization(schedule, strategy), ckpt=ckpt)
    assert probe.fractions[0][1] == 0.75
    for (_, a), (_, b) in zip(quantized_layers(straight), quantized_layers(resumed), strict=True):
        assert torch.equal(a.weight_quant.mask, b.weight_quant.mask)
        assert torch.equal(a.weight_quant.frozen, b.weight_quant.frozen)
        assert torch.equal(a.weight_quant.grid_exponent, b.weight_quant.grid_exponent)


def test_schedule_values() -> None:
    cb = IncrementalQuantization([0.5, 1.0], start_epoch=2, epochs_per_step=2)
    assert [cb.fraction(e) for e in range(8)] == [0, 0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    fn = IncrementalQuantization(lambda step: min(1.0, 0.25 * (step + 1)))
    assert [fn.fraction(e) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"schedule\(1\)=0.1 is below"):
        IncrementalQuantization(lambda step: 0.5 if step == 0 else 0.1).fraction(1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": [0.5, 0.25]}, r"schedule\[1\]=0.25 is below schedule\[0\]=0.5"),
        ({"schedule": [0.5, 1.5]}, r"schedule\[1\]=1.5 is not allowed; allowed: .*\[0, 1\]"),
        ({"schedule": []}, "schedule=.* is not allowed"),
        ({"strategy": "largest"}, "strategy='largest' is not allowed; allowed: random, magnitude"),
        ({"start_epoch": -1}, "start_epoch=-1 is not allowed; allowed: an integer >= 0"),
        ({"epochs_per_step": 0}, "epochs_per_step=0 is not allowed; allowed: an integer >= 1"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IncrementalQuantization(**kwargs)


def test_needs_quantize_first_and_bn_lock_before_start(tmp_path: Path) -> None:
    def fit(callbacks):
        L.Trainer(
            max_epochs=1,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
        ).fit(TinyNet(), tiny_loader())

    with pytest.raises(ValueError, match="add a Quantize callback"):
        fit([IncrementalQuantization()])
    with pytest.raises(ValueError, match=r"BatchNormLock\(lock_epoch=2\) must lock before"):
        fit([Quantize(INT_SE), IncrementalQuantization(start_epoch=1), BatchNormLock(2)])
