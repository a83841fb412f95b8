"""OscillationDampening and OscillationFreezing inside a real Trainer on the tiny network."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_autoq import LayerConfig, QuantPolicy, convert
from lightning_autoq.callbacks.oscillation import (
    OscillationDampening,
    OscillationFreezing,
    annealed,
    level_codes,
    level_values,
    sorted_levels,
    weight_quantizers,
)
from lightning_autoq.callbacks.quantize import Quantize
from tests.callbacks.tiny import TinyNet, tiny_loader

pytestmark = pytest.mark.usefixtures("single_thread")

POLICY = QuantPolicy(LayerConfig("lsq", weight_bits=3, act_bits=4), first_last_bits=None)


def _fit(tmp_path: Path, callbacks: list, epochs: int = 2, seed: int = 0) -> TinyNet:
    L.seed_everything(seed, verbose=False)
    module = TinyNet()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[Quantize(POLICY), *callbacks],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, tiny_loader())
    return module


def _distance(module: TinyNet) -> float:
    total = 0.0
    for _, weight, quantizer in weight_quantizers(module):
        levels = sorted_levels(quantizer, weight)
        w = weight.detach()
        inside = w.clamp(levels[..., 0], levels[..., -1])
        total += float(((inside - level_values(levels, level_codes(levels, w))) ** 2).sum())
    return total


def test_annealing_schedules():
    assert annealed(0.0, 1.0, 0.0, "cosine") == 0.0
    assert annealed(0.0, 1.0, 1.0, "cosine") == pytest.approx(1.0)
    assert annealed(0.0, 1.0, 0.5, "cosine") == pytest.approx(0.5)
    assert annealed(2.0, 1.0, 0.25, "linear") == pytest.approx(1.75)
    assert annealed(2.0, 1.0, 0.25, "constant") == 1.0


def test_dampening_gradient_is_the_formula(tmp_path):
    module = TinyNet()
    convert(module, POLICY)
    cb = OscillationDampening(weight=1.0)
    cb.setup(None, module, "fit")  # type: ignore[arg-type]
    loss, grads = cb.loss_and_gradients()
    total = 0.0
    for (_, weight, quantizer), grad in zip(cb._weights, grads, strict=True):
        w = weight.detach()
        q = quantizer(w).detach()  # the bin centre the quantizer itself gives
        levels = sorted_levels(quantizer, weight)
        inside = (w >= levels[..., 0]) & (w <= levels[..., -1])
        clipped = w.clamp(levels[..., 0], levels[..., -1])
        torch.testing.assert_close(grad, 2 * (clipped - q) * inside)
        total += float(((clipped - q) ** 2).sum())
    assert loss == pytest.approx(total, rel=1e-5)
    assert loss > 0


def test_dampening_lowers_the_distance_to_the_bin_centres(tmp_path):
    plain = _fit(tmp_path, [], epochs=3)
    damped_cb = OscillationDampening(weight=5.0, start_weight=5.0, schedule="constant")
    damped = _fit(tmp_path, [damped_cb], epochs=3)
    assert _distance(damped) < 0.5 * _distance(plain)
    assert damped_cb.last_loss > 0


def test_dampening_weight_is_annealed():
    cb = OscillationDampening(weight=1.0, start_weight=0.0, start_epoch=1, end_epoch=4)

    class _T:
        max_epochs = 10
        current_epoch = 0

    t = _T()
    assert cb.current_weight(t) == 0.0  # before start_epoch
    t.current_epoch = 1
    assert cb.current_weight(t) == pytest.approx(0.0)
    t.current_epoch = 3
    assert cb.current_weight(t) == pytest.approx(1.0)
    t.current_epoch = 4
    assert cb.current_weight(t) == 0.0  # after end_epoch


class Oscillator(L.Callback):
    """Moves one weight across a decision threshold and back after every step."""

    def __init__(self) -> None:
        self.values: tuple[float, float] | None = None
        self.step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _, weight, quantizer = weight_quantizers(pl_module)[1]
        levels = sorted_levels(quantizer, weight)[0, 0, 0, 0]
        if self.values is None:
            j = levels.numel() // 2
            gap = float(levels[j + 1] - levels[j])
            self.values = (float(levels[j]) + 0.2 * gap, float(levels[j + 1]) - 0.2 * gap)
        with torch.no_grad():
            weight[0, 0, 0, 0] = self.values[self.step % 2]
        self.step += 1


def test_freezing_freezes_an_oscillating_weight(tmp_path):
    freezing = OscillationFreezing(
        threshold_start=0.2, threshold_end=0.2, momentum=0.1, bn_batches=2
    )
    oscillator = Oscillator()
    module = _fit(tmp_path, [oscillator, freezing], epochs=3)
    name, weight, quantizer = weight_quantizers(module)[1]
    state = freezing.state[name]
    assert bool(state["frozen"][0, 0, 0, 0])
    assert state["frequency"][0, 0, 0, 0] > 0.2
    assert freezing.frozen_fraction() < 0.5  # only oscillating weights
    levels = sorted_levels(quantizer, weight)
    frozen_value = level_values(levels, state["frozen_code"])[0, 0, 0, 0]
    assert weight[0, 0, 0, 0].item() == frozen_value.item()  # written back after the oscillator
    # The frozen weight sits exactly on a level: its quantized value is itself.
    assert quantizer(weight.detach())[0, 0, 0, 0].item() == pytest.approx(frozen_value.item())
    # BN statistics were re-estimated on bn_batches batches (cumulative average).
    bn = module.model[1]
    assert int(bn.num_batches_tracked) == 2 and bn.momentum == 0.1


def test_freezing_state_round_trips():
    cb = OscillationFreezing()
    module = TinyNet()
    convert(module, POLICY)
    cb.setup(None, module, "fit")  # type: ignore[arg-type]
    name = next(iter(cb.state))
    cb.state[name]["frozen"][0] = True
    saved = cb.state_dict()
    other = OscillationFreezing()
    other.setup(None, module, "fit")  # type: ignore[arg-type]
    other.load_state_dict(saved)
    assert torch.equal(other.state[name]["frozen"], cb.state[name]["frozen"])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"threshold_start": 0.0}, "threshold_start=0.0"),
        ({"momentum": 1.5}, "momentum=1.5"),
        ({"bn_batches": -1}, "bn_batches=-1"),
        ({"schedule": "step"}, "schedule='step'"),
        ({"start_epoch": 3, "end_epoch": 2}, "end_epoch=2"),
    ],
)
def test_freezing_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        OscillationFreezing(**kwargs)


def test_dampening_bad_weight_and_unsupported_schemes():
    with pytest.raises(ValueError, match="weight=-1"):
        OscillationDampening(weight=-1)
    module = TinyNet()
    convert(module, QuantPolicy(LayerConfig("dorefa", 2, 2), first_last_bits=None))
    with pytest.raises(ValueError, match="dorefa/apot"):
        OscillationDampening().setup(None, module, "fit")  # type: ignore[arg-type]
