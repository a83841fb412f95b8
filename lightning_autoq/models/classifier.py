"""The LightningModule the recipes train: any image classifier network plus its training loop."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_autoq.models.checkpoint import load_model_weights
from lightning_autoq.models.param_groups import weight_decay_groups

Optimizer = Literal["sgd", "adamw"]
Scheduler = Literal["cosine", "none"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULERS: tuple[str, ...] = ("cosine", "none")


class ImageClassifier(L.LightningModule):
    """Trains ``model`` with cross-entropy on ``(images, labels)`` batches.

    Logs ``{train,val,test}/loss`` and ``{train,val,test}/acc`` (top-1) per epoch.
    Quantizer parameters (``"_quant."`` in their name), normalization parameters and biases
    get no weight decay. Callbacks that swap layers (``Quantize``) do it in ``setup``, before
    :meth:`configure_optimizers`, so the optimizer sees the quantized model's parameters.

    Args:
        model: the network, mapping images to ``num_classes`` logits.
        num_classes: number of classes (for the accuracy metrics).
        optimizer: ``"sgd"`` (SGD with momentum) or ``"adamw"``.
        lr: peak learning rate.
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: L2 penalty on the weights.
        scheduler: ``"cosine"`` (cosine annealing to 0 over ``trainer.max_epochs``, stepped
            per epoch) or ``"none"``.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        init_checkpoint: a Lightning ``.ckpt`` (its ``model.*`` weights are used) or a plain
            ``state_dict`` file, loaded strictly into ``model`` here, e.g. to start
            quantization-aware fine-tuning from a float run.

    Example:
        >>> from lightning_autoq.models import resnet20
        >>> module = ImageClassifier(resnet20(in_channels=1), lr=0.05)
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        optimizer: Optimizer = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: Scheduler = "cosine",
        label_smoothing: float = 0.0,
        init_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r} is not one of {SCHEDULERS}")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be at least 2")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        if weight_decay < 0 or momentum < 0:
            raise ValueError(
                f"weight_decay={weight_decay} and momentum={momentum} must be non-negative"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        if init_checkpoint is not None:
            load_model_weights(self.model, init_checkpoint)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        metric(logits, labels)
        batch_size = labels.shape[0]
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log(
            f"{stage}/acc",
            metric,
            on_step=False,
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=batch_size,
        )
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).argmax(dim=1)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = weight_decay_groups(self, hp.weight_decay)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.scheduler == "none":
            return optimizer
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            total, interval = max_epochs, "epoch"
        else:  # training bounded by max_steps only
            total, interval = int(self.trainer.estimated_stepping_batches), "step"
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }
