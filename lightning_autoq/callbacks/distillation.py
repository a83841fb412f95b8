"""Knowledge distillation from the float model (Hinton et al. 2015, https://arxiv.org/abs/1503.02531).

The quantized student is trained on ``(1 - alpha) * task_loss + alpha * T^2 * KL(p_t || p_s)``
with ``p = softmax(logits / T)``; the teacher is the float network as it was when the
trainer set up (before or after ``Quantize``: a quantized copy is turned back to float), or
a float checkpoint.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_autoq.callbacks.arguments import target_module
from lightning_autoq.convert import quantized_layers, restore_float
from lightning_autoq.models.checkpoint import load_model_weights


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_p_s = F.log_softmax(student.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return kl * temperature**2


def _loss_scale(trainer: L.Trainer) -> float:
    """The AMP loss scale the task loss was multiplied by (1 without a grad scaler)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else 1.0


class KnowledgeDistillation(L.Callback):
    """Distil the float teacher into the quantized student, LightningModule unchanged.

    A forward hook on the network sees the student's logits of the first training forward
    of each step, runs the teacher on the same inputs (no gradient), and registers a
    gradient hook on the logits that turns the task loss's gradient ``g`` into
    ``(1 - alpha) g + alpha T (p_s - p_t) / B``, the gradient of
    ``(1 - alpha) task_loss + alpha T^2 KL`` when the task loss depends on the network through
    its logits (cross-entropy): one backward pass, exact under AMP scaling and gradient
    accumulation. The teacher lives in this callback, not in the LightningModule: it is in
    evaluation mode, never trained, in no optimizer, and saved in this callback's state so a
    resumed run distils from the same teacher. Logs ``kd/loss`` (``T^2 KL``).

    Put it after ``SchemeSearch`` in the callback list (its architecture step runs the
    network at the start of the batch). Logits must be ``(batch, classes)``.

    Args:
        temperature: ``T`` (Hinton et al.; 4 is common for CIFAR-sized models).
        alpha: weight of the distillation term (ours: 0.5).
        teacher_checkpoint: a float Lightning checkpoint or state-dict file for the teacher;
            None: the network as set up.
        module_name: the network inside the LightningModule (None: the LightningModule).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.5,
        teacher_checkpoint: str | None = None,
        module_name: str | None = None,
    ) -> None:
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature={temperature} is not allowed; allowed: > 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha} is not allowed; allowed: [0, 1]")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.teacher_checkpoint = teacher_checkpoint
        self.module_name = module_name
        self.teacher: nn.Module | None = None
        self.last_loss: Tensor | None = None
        self._handle: Any = None
        self._armed = False
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if self.teacher is not None:
            return  # set up by an earlier stage
        model = target_module(pl_module, self.module_name)
        teacher = copy.deepcopy(model)
        if quantized_layers(teacher):
            restore_float(teacher)
        if self.teacher_checkpoint is not None:
            prefix = "" if self.module_name is None else f"{self.module_name}."
            load_model_weights(teacher, self.teacher_checkpoint, prefix=prefix)
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        self._handle = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._armed = True

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._armed:
            raise RuntimeError(
                "KnowledgeDistillation saw no training forward of the network in this step; "
                f"module_name={self.module_name!r} must name the network the step calls"
            )
        if self.last_loss is not None:
            pl_module.log("kd/loss", self.last_loss, on_step=False, on_epoch=True)

    def _on_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not (self._armed and module.training and torch.is_grad_enabled()):
            return
        self._armed = False
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        assert self.teacher is not None
        reference = next(self.teacher.parameters(), None)
        if reference is not None and reference.device != output.device:
            self.teacher.to(output.device)
        with torch.no_grad():
            teacher = self.teacher(*args, **kwargs)
        if output.dim() != 2 or teacher.shape != output.shape:
            raise ValueError(
                f"distillation needs (batch, classes) logits; student {tuple(output.shape)}, "
                f"teacher {tuple(teacher.shape)}"
            )
        t = self.temperature
        student = output.detach().float()
        self.last_loss = distillation_loss(student, teacher, t).detach()
        p_s = F.softmax(student / t, dim=1)
        p_t = F.softmax(teacher.float() / t, dim=1)
        kd_grad = self.alpha * t * (p_s - p_t) / student.shape[0]
        alpha, trainer = self.alpha, self._trainer

        def mix(grad: Tensor) -> Tensor:
            factor = 1.0
            if trainer is not None:
                factor = _loss_scale(trainer) / trainer.accumulate_grad_batches
            return (1 - alpha) * grad + (kd_grad * factor).to(grad.dtype)

        output.register_hook(mix)

    def state_dict(self) -> dict[str, Any]:
        if self.teacher is None:
            return {}
        return {"teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "teacher" in state_dict and self.teacher is not None:
            self.teacher.load_state_dict(state_dict["teacher"])


__all__ = ["KnowledgeDistillation", "distillation_loss"]
