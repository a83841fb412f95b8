"""The IncrementalQuantization callback: INQ / IOIQ mask schedule over epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_autoq.callbacks.arguments import check_epoch, target_module
from lightning_autoq.convert import quantized_layers
from lightning_autoq.nn import QuantLayer
from lightning_autoq.quant.incremental import MASK_STRATEGIES, IncrementalWeight, MaskStrategy

Schedule = Sequence[float] | Callable[[int], float]
DEFAULT_SCHEDULE: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)


def _check_fraction(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{where}={value!r} is not allowed; allowed: a number in [0, 1]")
    return float(value)


class IncrementalQuantization(L.Callback):
    """Quantize the weights incrementally (INQ, Zhou et al. 2017, https://arxiv.org/abs/1702.03044).

    The IOIQ training side (Yang et al. 2023): every quantized layer's ``weight_quant`` is
    wrapped in :class:`~lightning_autoq.quant.incremental.IncrementalWeight` in ``setup``, so
    the weight becomes ``M * Q(W) + (1 - M) * W``. At each training epoch start the quantized
    fraction is set from ``trainer.current_epoch``: the first step captures each layer's grid
    (its quantizer parameters, e.g. the INT-SE exponent), later steps quantize more entries on
    that same grid. Masked entries are frozen in buffers (exactly fixed under weight decay
    and momentum); the others stay float and train. Masks, frozen values and grids are
    buffers, saved in the model checkpoint, so resuming mid-schedule gives the same masks.
    Before ``start_epoch`` the layers are fully fake-quantized as before; any scheme works.

    Add it after :class:`~lightning_autoq.callbacks.Quantize` (and after a
    :class:`~lightning_autoq.callbacks.batchnorm_lock.BatchNormLock` that locks at
    ``start_epoch``, so the folded weights are the ones quantized).

    Args:
        schedule: quantized fraction per step, non-decreasing in ``[0, 1]`` (the last value
            holds afterwards), or a callable ``step -> fraction`` (checked when called).
        strategy: ``"magnitude"`` (largest ``|w|`` first) or ``"random"`` (seeded).
        start_epoch: epoch of the first step; before it no entry is frozen.
        epochs_per_step: epochs spent at each fraction.
        seed: seed of the random masks (layer ``i`` uses ``seed + i``; same on every rank).
        module_name: submodule to act on; None = the whole LightningModule.

    Example:
        >>> cb = IncrementalQuantization(schedule=[0.5, 1.0], strategy="random")
        >>> cb.fraction(0), cb.fraction(5)
        (0.5, 1.0)
    """

    def __init__(
        self,
        schedule: Schedule = DEFAULT_SCHEDULE,
        strategy: MaskStrategy = "magnitude",
        start_epoch: int = 0,
        epochs_per_step: int = 1,
        seed: int = 0,
        module_name: str | None = None,
    ) -> None:
        if strategy not in MASK_STRATEGIES:
            raise ValueError(
                f"strategy={strategy!r} is not allowed; allowed: {', '.join(MASK_STRATEGIES)}"
            )
        if callable(schedule):
            self.schedule: Schedule = schedule
        else:
            values = list(schedule)
            if not values:
                raise ValueError("schedule=[] is not allowed; allowed: a non-empty list")
            fractions = [_check_fraction(v, f"schedule[{i}]") for i, v in enumerate(values)]
            for i in range(1, len(fractions)):
                if fractions[i] < fractions[i - 1]:
                    raise ValueError(
                        f"schedule[{i}]={fractions[i]} is below schedule[{i - 1}]="
                        f"{fractions[i - 1]}; allowed: a non-decreasing sequence"
                    )
            self.schedule = tuple(fractions)
        self.strategy = strategy
        self.start_epoch = check_epoch("start_epoch", start_epoch, 0)
        self.epochs_per_step = check_epoch("epochs_per_step", epochs_per_step, 1)
        self.seed = int(seed)
        self.module_name = module_name
        self._last: tuple[int, float] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module_name=self.module_name)

    def fraction(self, epoch: int) -> float:
        """The quantized fraction during ``epoch`` (0 before ``start_epoch``)."""
        if epoch < self.start_epoch:
            return 0.0
        step = (epoch - self.start_epoch) // self.epochs_per_step
        if callable(self.schedule):
            value = _check_fraction(self.schedule(step), f"schedule({step})")
            if step > 0:
                previous = _check_fraction(self.schedule(step - 1), f"schedule({step - 1})")
                if value < previous:
                    raise ValueError(
                        f"schedule({step})={value} is below schedule({step - 1})={previous}; "
                        "allowed: a non-decreasing schedule"
                    )
            return value
        return self.schedule[min(step, len(self.schedule) - 1)]

    def layers(self, pl_module: L.LightningModule) -> list[tuple[str, QuantLayer]]:
        """The quantized layers this callback manages."""
        return quantized_layers(target_module(pl_module, self.module_name))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        layers = self.layers(pl_module)
        if not layers:
            raise ValueError(
                "IncrementalQuantization found no quantized layer: add a Quantize callback "
                "before it in the callbacks list"
            )
        self._check_batchnorm_lock(trainer)
        for index, (_, layer) in enumerate(layers):
            if isinstance(layer.weight_quant, IncrementalWeight):
                continue  # idempotent across stages
            weight = layer.float_weight_bias()[0]
            layer.weight_quant = IncrementalWeight(  # type: ignore[assignment]
                layer.weight_quant, weight, self.strategy, self.seed + index
            )

    def _check_batchnorm_lock(self, trainer: L.Trainer) -> None:
        from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock

        callbacks = list(trainer.callbacks)
        me = callbacks.index(self) if self in callbacks else len(callbacks)
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, BatchNormLock):
                continue
            if cb.lock_epoch > self.start_epoch or (cb.lock_epoch == self.start_epoch and i > me):
                raise ValueError(
                    f"BatchNormLock(lock_epoch={cb.lock_epoch}) must lock before the incremental "
                    f"schedule starts (start_epoch={self.start_epoch}) and, at the same epoch, be "
                    "listed before IncrementalQuantization: the folded weights are quantized"
                )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        fraction = self.fraction(epoch)
        if fraction <= 0.0:
            return
        for _, layer in self.layers(pl_module):
            wrapper = layer.weight_quant
            assert isinstance(wrapper, IncrementalWeight)
            source = layer.float_weight_bias()[0]
            wrapper.start(source)
            wrapper.advance(source, fraction)
        if self._last != (epoch, fraction):
            self._last = (epoch, fraction)
            rank_zero_info(f"IncrementalQuantization: epoch {epoch}, quantized fraction {fraction}")
        pl_module.log("autoq/quantized_fraction", fraction, on_epoch=True, on_step=False)

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "seed": self.seed, "start_epoch": self.start_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mine = self.state_dict()
        if state_dict != mine:
            raise ValueError(
                f"the checkpoint was trained with IncrementalQuantization settings {state_dict}, "
                f"this callback has {mine}"
            )
