"""The Quantize callback: convert the LightningModule's model when the trainer sets up."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_autoq.callbacks.arguments import target_module
from lightning_autoq.convert import (
    QuantPolicy,
    convert,
    format_table,
    layer_table,
    quantized_layers,
)
from lightning_autoq.convert.report import COLUMNS, weight_size_bits
from lightning_autoq.utils.logging import log_table


class Quantize(L.Callback):
    """Quantize the model (AutoQNN's QAG) in ``setup``, for every stage.

    ``setup`` runs before ``configure_optimizers`` and before a checkpoint is restored, so
    the optimizer sees the quantizers' parameters and a quantized checkpoint loads strictly.
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

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = QuantPolicy.from_dict(state_dict["policy"])
        if saved != self.policy:
            raise ValueError(
                "the checkpoint was trained with another quantization policy:\n"
                f"{saved.to_yaml()}\nthis Quantize callback has:\n{self.policy.to_yaml()}"
            )
