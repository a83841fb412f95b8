"""Oscillation dampening and iterative weight freezing (Nagel et al., ICML 2022,
https://arxiv.org/abs/2203.11086).

In quantization-aware training with the straight-through estimator, latent weights near a
decision threshold oscillate between two grid points. :class:`OscillationDampening` adds the
regulariser ``lambda * sum ||q(w).detach() - clip(w)||^2`` (pulling each weight toward the
centre of its bin) with ``lambda`` annealed over epochs; :class:`OscillationFreezing` tracks
how often each weight's integer value flips direction and freezes the ones that oscillate
too often, then re-estimates the batch-norm statistics. Both act on the weights of every
quantized layer whose weight quantizer keeps the weight's units (not ``dorefa``/``apot``,
whose outputs are normalised), and neither changes the LightningModule or the model's
structure.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_autoq.callbacks.arguments import check_epoch, target_module
from lightning_autoq.callbacks.distributed import average_
from lightning_autoq.convert import quantized_layers
from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.mixture import SchemeMixture

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def annealed(start: float, end: float, progress: float, schedule: str) -> float:
    """``start`` at progress 0 to ``end`` at progress 1 (clamped), cosine or linear."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return end
    if schedule == "linear":
        return start + (end - start) * p
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def weight_quantizers(model: nn.Module) -> list[tuple[str, nn.Parameter, Quantizer]]:
    """``(layer name, weight, quantizer)`` of every quantized layer whose grid is in the
    weight's own units; a clear error when there is none."""
    found, skipped = [], []
    for name, layer in quantized_layers(model):
        q: Any = layer.weight_quant
        if isinstance(q, SchemeMixture):
            q = q.candidate if q.fixed else None
        if not isinstance(q, Quantizer) or getattr(q.scheme, "normalizes_input", False):
            skipped.append(name)
            continue
        found.append((name, layer.weight, q))  # type: ignore[attr-defined]
    if not found:
        raise ValueError(
            f"no quantized layer with a weight grid in the weight's units (skipped: {skipped}); "
            "quantize the model first (Quantize callback) with a scheme other than dorefa/apot"
        )
    return found


@torch.no_grad()
def sorted_levels(quantizer: Quantizer, weight: Tensor) -> Tensor:
    """The quantizer's level set for ``weight``, sorted, shaped ``weight.shape + (L,)``."""
    w = weight.detach().float()
    params = {k: v.detach() for k, v in quantizer.parameters_for(w).items()}
    levels = quantizer.scheme.levels(params, quantizer.signed()).sort(dim=-1).values
    return levels.expand(*w.shape, levels.shape[-1])


@torch.no_grad()
def level_codes(levels: Tensor, weight: Tensor) -> Tensor:
    """Index of each weight's nearest level in ``levels`` (from :func:`sorted_levels`)."""
    mid = (levels[..., 1:] + levels[..., :-1]) / 2
    return torch.searchsorted(mid.contiguous(), weight.detach().float().unsqueeze(-1)).squeeze(-1)


def level_values(levels: Tensor, codes: Tensor) -> Tensor:
    """The level of each code."""
    return levels.gather(-1, codes.unsqueeze(-1)).squeeze(-1)


class _EpochSchedule(L.Callback):
    """Shared argument checks and the annealing of one value over an epoch range."""

    def __init__(
        self, start_epoch: int, end_epoch: int | None, schedule: str, module_name: str | None
    ) -> None:
        self.start_epoch = check_epoch("start_epoch", start_epoch, 0)
        self.end_epoch = None if end_epoch is None else check_epoch("end_epoch", end_epoch, 1)
        if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"end_epoch={end_epoch} is not allowed; allowed: > start_epoch={start_epoch}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(
                f"schedule={schedule!r} is not allowed; allowed: {', '.join(SCHEDULES)}"
            )
        self.schedule = schedule
        self.module_name = module_name
        self._weights: list[tuple[str, nn.Parameter, Quantizer]] = []

    def progress(self, trainer: L.Trainer) -> float:
        end = self.end_epoch
        if end is None:
            end = max(int(trainer.max_epochs or 1), self.start_epoch + 1)
        span = max(end - 1 - self.start_epoch, 1)
        return (trainer.current_epoch - self.start_epoch) / span

    def active(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._weights:
            self._weights = weight_quantizers(target_module(pl_module, self.module_name))


class OscillationDampening(_EpochSchedule):
    """Add ``lambda * sum_w (q(w).detach() - clip(w))^2`` to the training loss.

    ``q(w)`` is the nearest level (the bin centre) and ``clip`` clips to the level range, so
    the gradient ``2 lambda (clip(w) - q(w))`` pulls every unclipped weight toward its bin
    centre. The gradient is added to the weights' gradients just before each optimizer step
    (after AMP unscaling and gradient accumulation), so the LightningModule is unchanged and
    DDP sees one backward pass. ``lambda`` goes from ``start_weight`` at ``start_epoch`` to
    ``weight`` at the last epoch (``end_epoch - 1``, default ``max_epochs - 1``) on
    ``schedule`` (the paper anneals it with a cosine). Logs ``oscillation/dampening_loss``
    and ``oscillation/dampening_weight``.

    Args:
        weight: final ``lambda`` (ours; tune per model: the regulariser sums over weights).
        start_weight: initial ``lambda``.
        start_epoch: first epoch in which the loss is applied.
        end_epoch: the loss is applied before this epoch (None: until the end of training).
        schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` (``weight`` throughout).
        module_name: submodule holding the quantized layers (None: the LightningModule).
    """

    def __init__(
        self,
        weight: float = 1e-2,
        start_weight: float = 0.0,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        schedule: Schedule = "cosine",
        module_name: str | None = None,
    ) -> None:
        super().__init__(start_epoch, end_epoch, schedule, module_name)
        for label, value in (("weight", weight), ("start_weight", start_weight)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{label}={value} is not allowed; allowed: a finite value >= 0")
        self.weight = float(weight)
        self.start_weight = float(start_weight)
        self.last_loss = 0.0

    def current_weight(self, trainer: L.Trainer) -> float:
        """``lambda`` of the current epoch (0 outside the epoch range)."""
        if not self.active(trainer):
            return 0.0
        return annealed(self.start_weight, self.weight, self.progress(trainer), self.schedule)

    @torch.no_grad()
    def loss_and_gradients(self) -> tuple[float, list[Tensor]]:
        """The dampening loss (lambda = 1) and its gradient for each weight."""
        total, grads = 0.0, []
        for _, weight, quantizer in self._weights:
            levels = sorted_levels(quantizer, weight)
            w = weight.detach().float()
            centre = level_values(levels, level_codes(levels, w))
            clipped = torch.minimum(torch.maximum(w, levels[..., 0]), levels[..., -1])
            diff = clipped - centre
            total += float((diff**2).sum())
            inside = (w >= levels[..., 0]) & (w <= levels[..., -1])
            grads.append((2 * diff * inside).to(weight.dtype))
        return total, grads

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        lam = self.current_weight(trainer)
        if lam == 0.0:
            return
        loss, grads = self.loss_and_gradients()
        self.last_loss = lam * loss
        for (_, weight, _), grad in zip(self._weights, grads, strict=True):
            if weight.grad is None:
                weight.grad = lam * grad
            else:
                weight.grad.add_(grad, alpha=lam)
        pl_module.log("oscillation/dampening_loss", self.last_loss, on_step=False, on_epoch=True)
        pl_module.log("oscillation/dampening_weight", lam, on_step=False, on_epoch=True)


class OscillationFreezing(_EpochSchedule):
    """Freeze weights whose integer value oscillates (iterative freezing, Nagel et al. 2022).

    After every optimizer step each weight's integer (the index of its nearest level) is
    compared with the previous step's: an *oscillation* is a change whose direction is
    opposite to the weight's last change. Its frequency is the EMA ``f <- (1 - m) f + m o``
    and the integer's EMA ``e <- (1 - m) e + m k`` (momentum ``m``). A weight whose ``f``
    exceeds the threshold (annealed from ``threshold_start`` to ``threshold_end`` over the
    epoch range) is frozen at the level of ``round(e)``: its value is written back after every
    step and its gradient is zeroed. At the end of training the batch-norm running statistics
    are re-estimated on ``bn_batches`` training batches (cumulative average), since freezing
    shifts the layers' outputs; under DDP each rank averages its share of the batches and the
    statistics are averaged over the ranks, so every rank ends with the same model. The state
    (EMAs, frozen masks) is saved in checkpoints.

    Args:
        threshold_start: frequency threshold at ``start_epoch`` (ours; the paper tunes one
            per model, around 1-2 %).
        threshold_end: frequency threshold at the last epoch.
        momentum: EMA momentum ``m`` (paper: 0.01).
        start_epoch: first epoch in which weights are tracked and frozen.
        end_epoch: tracking and freezing stop before this epoch (None: end of training).
        schedule: annealing of the threshold.
        bn_batches: training batches for the BN re-estimation (0: none).
        module_name: submodule holding the quantized layers (None: the LightningModule).
    """

    def __init__(
        self,
        threshold_start: float = 0.04,
        threshold_end: float = 0.01,
        momentum: float = 0.01,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        schedule: Schedule = "cosine",
        bn_batches: int = 50,
        module_name: str | None = None,
    ) -> None:
        super().__init__(start_epoch, end_epoch, schedule, module_name)
        for label, value in (
            ("threshold_start", threshold_start),
            ("threshold_end", threshold_end),
        ):
            if not 0 < value <= 1:
                raise ValueError(f"{label}={value} is not allowed; allowed: (0, 1]")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum={momentum} is not allowed; allowed: (0, 1]")
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
            raise ValueError(f"bn_batches={bn_batches!r} is not allowed; allowed: an integer >= 0")
        self.threshold_start, self.threshold_end = float(threshold_start), float(threshold_end)
        self.momentum = float(momentum)
        self.bn_batches = bn_batches
        self.state: dict[str, dict[str, Tensor]] = {}
        self._last_step = -1

    def threshold(self, trainer: L.Trainer) -> float:
        """The freezing threshold of the current epoch."""
        return annealed(
            self.threshold_start, self.threshold_end, self.progress(trainer), self.schedule
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for name, weight, _ in self._weights:
            if name in self.state:
                continue
            shape = weight.shape
            self.state[name] = {
                "code": torch.full(shape, -1, dtype=torch.long),
                "direction": torch.zeros(shape, dtype=torch.int8),
                "frequency": torch.zeros(shape),
                "code_ema": torch.zeros(shape),
                "frozen": torch.zeros(shape, dtype=torch.bool),
                "frozen_code": torch.zeros(shape, dtype=torch.long),
            }

    def _state(self, name: str, device: torch.device) -> dict[str, Tensor]:
        state = self.state[name]
        if state["code"].device != device:
            state = {k: v.to(device) for k, v in state.items()}
            self.state[name] = state
        return state

    def frozen_fraction(self) -> float:
        """Fraction of the tracked weights that are frozen."""
        frozen = sum(int(s["frozen"].sum()) for s in self.state.values())
        total = sum(s["frozen"].numel() for s in self.state.values())
        return frozen / max(total, 1)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        for name, weight, _ in self._weights:
            state = self._state(name, weight.device)
            if weight.grad is not None and bool(state["frozen"].any()):
                weight.grad.masked_fill_(state["frozen"], 0)

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._last_step or not self.active(trainer):
            return  # no optimizer step this batch (accumulation), or outside the epoch range
        self._last_step = trainer.global_step
        threshold, m = self.threshold(trainer), self.momentum
        for name, weight, quantizer in self._weights:
            state = self._state(name, weight.device)
            levels = sorted_levels(quantizer, weight)
            code = level_codes(levels, weight)
            if bool((state["code"] < 0).all()):  # first tracked step
                state["code"].copy_(code)
                state["code_ema"].copy_(code.float())
                continue
            live = ~state["frozen"]
            delta = code - state["code"]
            direction = torch.sign(delta).to(torch.int8)
            changed = (delta != 0) & live
            flipped = changed & (state["direction"] != 0) & (direction != state["direction"])
            frequency = state["frequency"] * (1 - m) + flipped.float() * m
            state["frequency"].copy_(torch.where(live, frequency, state["frequency"]))
            state["direction"].copy_(torch.where(changed, direction, state["direction"]))
            state["code"].copy_(torch.where(live, code, state["code"]))
            ema = state["code_ema"] * (1 - m) + code.float() * m
            state["code_ema"].copy_(torch.where(live, ema, state["code_ema"]))
            newly = live & (state["frequency"] > threshold)
            if bool(newly.any()):
                top = levels.shape[-1] - 1
                target = state["code_ema"].round().long().clamp(0, top)
                state["frozen_code"].copy_(torch.where(newly, target, state["frozen_code"]))
                state["frozen"] |= newly
            if bool(state["frozen"].any()):
                value = level_values(levels, state["frozen_code"]).to(weight.dtype)
                weight.copy_(torch.where(state["frozen"], value, weight))
        pl_module.log(
            "oscillation/frozen_fraction", self.frozen_fraction(), on_step=False, on_epoch=True
        )
        pl_module.log("oscillation/threshold", threshold, on_step=False, on_epoch=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bn_batches == 0 or trainer.train_dataloader is None:
            return
        model = target_module(pl_module, self.module_name)
        seen = reestimate_batchnorm(pl_module, model, trainer.train_dataloader, self.bn_batches)
        average_(
            t
            for bn in model.modules()
            if isinstance(bn, _BatchNorm) and bn.track_running_stats
            for t in (bn.running_mean, bn.running_var)
            if t is not None
        )
        rank_zero_info(
            f"OscillationFreezing: {100 * self.frozen_fraction():.2f}% of the weights frozen; "
            f"batch-norm statistics re-estimated on {seen} batches"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": {n: {k: v.cpu() for k, v in s.items()} for n, s in self.state.items()},
            "last_step": self._last_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["state"]
        if set(saved) != set(self.state):
            raise ValueError(
                f"the checkpoint tracked layers {sorted(saved)}; "
                f"this model has {sorted(self.state)}"
            )
        self.state = {n: dict(s) for n, s in saved.items()}
        self._last_step = int(state_dict["last_step"])


@torch.no_grad()
def reestimate_batchnorm(
    pl_module: L.LightningModule, model: nn.Module, loader: Any, batches: int
) -> int:
    """Recompute every BN's running statistics as the plain average over ``batches`` batches.

    The rest of the model runs in evaluation mode (quantizer ranges stay fixed); the batch's
    first element is the input when the batch is a tuple or list. Returns the batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in norms}
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
        bn.train()
    seen = 0
    try:
        for batch in loader:
            if seen >= batches:
                break
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs)
            seen += 1
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return seen


__all__ = [
    "OscillationDampening",
    "OscillationFreezing",
    "annealed",
    "level_codes",
    "reestimate_batchnorm",
    "sorted_levels",
    "weight_quantizers",
]
