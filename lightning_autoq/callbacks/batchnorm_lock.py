"""The BatchNormLock callback: learn batch-norm statistics, then fold and lock them (IOIQ)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_autoq.callbacks.arguments import check_epoch, target_module
from lightning_autoq.export.fold import find_bn_pairs
from lightning_autoq.nn import QuantLayer


class BatchNormLock(L.Callback):
    """Batch norm learn-then-lock (IOIQ, Yang et al. 2023; folding as in Jacob et al. 2018,
    https://arxiv.org/abs/1712.05877).

    In ``setup`` every quantized conv/linear followed only by a BatchNorm (found with
    ``torch.fx``, see :func:`~lightning_autoq.export.fold.find_bn_pairs`) is given its BN
    (:meth:`~lightning_autoq.nn.QuantLayer.attach_batchnorm`): the state dict gains one
    ``bn_locked`` buffer per layer and nothing else. Before ``lock_epoch`` the layer and BN
    train as usual (statistics are learned). From the start of ``lock_epoch`` on, the BN's
    running statistics are frozen, the layer computes with the folded weight
    ``w gamma / sqrt(var + eps)`` (that is what gets quantized) and the folded bias
    ``beta + gamma (b - mean) / sqrt(var + eps)``, and the BN passes its input through.
    Gamma and beta keep training through the folded expression. The lock is a buffer, so it
    is saved in checkpoints; ``trainer.current_epoch`` re-derives it on resume.

    Add it after :class:`~lightning_autoq.callbacks.Quantize`.

    Args:
        lock_epoch: first epoch trained in the folded form (0 = from the start).
        module_name: submodule to act on (traced with ``torch.fx``); None = the whole
            LightningModule.

    Example:
        >>> cb = BatchNormLock(lock_epoch=2)
    """

    def __init__(self, lock_epoch: int = 0, module_name: str | None = None) -> None:
        self.lock_epoch = check_epoch("lock_epoch", lock_epoch, 0)
        self.module_name = module_name

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module_name=self.module_name)

    def paired_layers(self, pl_module: L.LightningModule) -> list[QuantLayer]:
        """The layers paired with a batch norm (after ``setup``)."""
        model = target_module(pl_module, self.module_name)
        return [m for m in model.modules() if isinstance(m, QuantLayer) and m.batchnorm]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model: nn.Module = target_module(pl_module, self.module_name)
        pairs = find_bn_pairs(model)
        if not pairs:
            raise ValueError(
                f"BatchNormLock found no quantized conv/linear -> BatchNorm pair in "
                f"{type(model).__name__}: add a Quantize callback before it"
            )
        for layer_name, bn_name in pairs:
            layer = model.get_submodule(layer_name)
            layer.attach_batchnorm(model.get_submodule(bn_name))  # type: ignore[operator]
        rank_zero_info(f"BatchNormLock: {len(pairs)} BN(s) lock at epoch {self.lock_epoch}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch < self.lock_epoch:
            return
        for layer in self.paired_layers(pl_module):
            layer.bn_locked.fill_(True)

    def state_dict(self) -> dict[str, Any]:
        return {"lock_epoch": self.lock_epoch}
