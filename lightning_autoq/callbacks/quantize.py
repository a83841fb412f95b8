"""The Quantize callback: convert the LightningModule's model when the trainer sets up."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_autoq.callbacks.arguments import target_module
from lightning_autoq.callbacks.distributed import broadcast_, world_size
from lightning_autoq.convert import (
    QuantPolicy,
    convert,
    format_table,
    layer_table,
    quantized_layers,
)
from lightning_autoq.convert.report import COLUMNS, weight_size_bits
from lightning_autoq.quant import Quantizer
from lightning_autoq.utils.logging import log_table


class Quantize(L.Callback):
    """Quantize the model (AutoQNN's QAG) in ``setup``, for every stage.

    ``setup`` runs before ``configure_optimizers`` and before a checkpoint is restored, so
    the optimizer sees the quantizers' parameters and a quantized checkpoint loads strictly.
    Under DDP, learned quantizer parameters (e.g. LSQ steps) are initialised by each rank from
    its own first batch; they are broadcast from rank 0 at the start of training and before
    the first optimizer step after each one is initialised, so every rank trains one model.
    A model that already has quantized layers (``setup`` again for test after fit) is left as
    it is, with whatever later callbacks changed in it.

    Args:
        policy: the per-layer choices (default: :class:`~lightning_autoq.QuantPolicy`()).
        module_name: the submodule of the LightningModule to quantize (e.g. ``"model"``);
            None quantizes the whole LightningModule.

    Example:
        >>> from lightning_autoq import LayerConfig, QuantPolicy
        >>> cb = Quantize(QuantPolicy(LayerConfig("lsq", weight_bits=4, act_bits=4)))
        >>> trainer = L.Trainer(callbacks=[cb], max_epochs=1)  # doctest: +SKIP
    """

    def __init__(self, policy: QuantPolicy | None = None, module_name: str | None = None) -> None:
        self.policy = policy if policy is not None else QuantPolicy()
        if not isinstance(self.policy, QuantPolicy):
            raise TypeError(f"policy must be a QuantPolicy, got {type(self.policy).__name__}")
        self.module_name = module_name
        self._pending: list[Quantizer] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module_name=self.module_name)

    def target(self, pl_module: L.LightningModule) -> nn.Module:
        """The module this callback acts on."""
        return target_module(pl_module, self.module_name)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = self.target(pl_module)
        if quantized_layers(model):
            # Converted by an earlier stage (test after fit): later callbacks may have changed
            # its layers (a searched scheme, learned bits), so it is left as it is.
            return
        convert(model, self.policy)
        rows = layer_table(model)
        size_kib = weight_size_bits(model) / 8 / 1024
        rank_zero_info(
            f"Quantized {len(rows)} layers ({size_kib:.1f} KiB of weights):\n{format_table(rows)}"
        )
        if trainer.is_global_zero and trainer.loggers:
            log_table(trainer.loggers, "autoq/layers", list(COLUMNS), rows)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        quantizers = [
            m
            for m in self.target(pl_module).modules()
            if isinstance(m, Quantizer) and next(m.parameters(recurse=False), None) is not None
        ]
        # Initialised already (a checkpoint, or each rank's sanity-check batch): rank 0's.
        self._pending = _broadcast_initialized(quantizers)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._pending:
            self._pending = _broadcast_initialized(self._pending)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = QuantPolicy.from_dict(state_dict["policy"])
        if saved != self.policy:
            raise ValueError(
                "the checkpoint was trained with another quantization policy:\n"
                f"{saved.to_yaml()}\nthis Quantize callback has:\n{self.policy.to_yaml()}"
            )


def _broadcast_initialized(quantizers: list[Quantizer]) -> list[Quantizer]:
    """Broadcast the learned parameters of the initialised ``quantizers`` from rank 0 (a
    collective call under DDP); the ones still waiting for data. Nothing when not distributed.
    """
    if world_size() == 1 or not quantizers:
        return []
    flags = torch.stack([q.initialized.detach() for q in quantizers]).cpu().tolist()
    ready = [q for q, flag in zip(quantizers, flags, strict=True) if flag]
    broadcast_([p for q in ready for p in q.parameters(recurse=False)])
    return [q for q, flag in zip(quantizers, flags, strict=True) if not flag]
