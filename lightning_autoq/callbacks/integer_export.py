"""The IntegerExport callback: at the end of fit, write the integer-only model and check it."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_autoq.callbacks.arguments import run_folder, target_module
from lightning_autoq.callbacks.distributed import broadcast_, sum_over_ranks
from lightning_autoq.export.integer import (
    ExportError,
    Scales,
    check_against_simulation,
    check_scales,
    lock_for_export,
    lower,
)
from lightning_autoq.runtime import IntegerModel, packed_size_bytes, save
from lightning_autoq.utils.logging import log_table

REPORT_COLUMNS = ["layer", "weight_bits", "input_bits", "accumulator_bits", "output_bits"]


class IntegerExport(L.Callback):
    """Export the trained model as an integer-only program (IOIQ, Yang et al. 2023).

    At the end of ``fit`` (and at the end of ``validate``, which is how ``autoq export``
    exports a checkpoint) the target module is exported with
    :func:`~lightning_autoq.export.export_integer` (batch norm folded, integer weights and
    activations, int32 accumulation, rounding shifts), checked on ``check_batches``
    validation batches (training batches where there is no validation loop) to give
    exactly the fake-quantized model's logits (zero tolerance; with ``scales="dyadic"``, the
    same predictions on at least ``min_top1_agreement`` of them), and written to ``path``
    (safetensors + JSON graph; nothing is written if a check fails), and to ``onnx_path``.
    With ``evaluate``, the integer model's accuracy on the validation data is logged as
    ``integer/val_acc`` next to the fake-quantized model's ``integer/simulation_val_acc``.
    Under DDP every rank exports rank 0's model (its buffers, e.g. running ranges, are
    broadcast first), the accuracies count the samples of every rank, and rank 0 alone writes
    the file and logs (the other ranks wait for it, then know its path).

    Args:
        path: the file to write; None = ``<trainer.log_dir>/model.int.safetensors``.
        module_name: submodule to export (default: ``"model"`` if the LightningModule has
            one, else the LightningModule itself).
        check_batches: validation batches compared output for output.
        evaluate: also compute both accuracies on the whole validation set.
        scales: ``"power_of_two"`` (bit-exact; INT-SE, fixed point) or ``"dyadic"`` (also
            LSQ and clip, by integer multipliers; see
            :func:`~lightning_autoq.export.export_integer`).
        min_top1_agreement: the dyadic check's threshold on the check batches.
        onnx_path: also write the integer ONNX model there (needs the ``onnx`` package).

    Example:
        >>> cb = IntegerExport(path="runs/int/model.int.safetensors")
    """

    def __init__(
        self,
        path: str | None = None,
        module_name: str | None = None,
        check_batches: int = 2,
        evaluate: bool = True,
        scales: Scales = "power_of_two",
        min_top1_agreement: float = 0.99,
        onnx_path: str | None = None,
    ) -> None:
        if isinstance(check_batches, bool) or not isinstance(check_batches, int):
            raise ValueError(f"check_batches={check_batches!r} is not allowed; allowed: >= 1")
        if check_batches < 1:
            raise ValueError(f"check_batches={check_batches} is not allowed; allowed: >= 1")
        self.path = path
        self.module_name = module_name
        self.check_batches = check_batches
        self.evaluate = evaluate
        check_scales(scales, min_top1_agreement)
        self.scales: Scales = scales
        self.min_top1_agreement = float(min_top1_agreement)
        self.onnx_path = onnx_path
        self.integer_model: IntegerModel | None = None
        self.written: Path | None = None
        self.metrics: dict[str, float] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.export(trainer, pl_module)

    def _module(self, pl_module: L.LightningModule) -> nn.Module:
        name = self.module_name
        if name is None and isinstance(getattr(pl_module, "model", None), nn.Module):
            name = "model"
        return target_module(pl_module, name)

    def _target_path(self, trainer: L.Trainer) -> Path:
        """The file to write; call on every rank (the run folder is a collective call)."""
        if self.path is not None:
            return Path(self.path)
        return run_folder(trainer) / "model.int.safetensors"

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> IntegerModel:
        """Export, check, optionally evaluate, log and write (rank 0 writes)."""
        model = self._module(pl_module)
        broadcast_(list(model.buffers()))  # DDP re-broadcasts them at each forward anyway
        loader = _validation_loader(trainer)
        batches = [_inputs(b) for b in islice(iter(loader), self.check_batches)]
        if not batches:
            raise ExportError("IntegerExport needs validation data: the loader is empty")
        was_training = model.training
        try:
            simulation = lock_for_export(model)
            integer_model = lower(simulation, batches[0], self.scales)
            agreement = check_against_simulation(
                simulation, integer_model, batches, self.scales, self.min_top1_agreement
            )
            self.metrics = {"integer/check_top1_agreement": agreement}
            if self.evaluate:
                self.metrics.update(_accuracies(simulation, integer_model, loader))
        finally:
            model.train(was_training)
        program = integer_model.program
        sizes = packed_size_bytes(program)
        self.metrics["integer/weight_bytes"] = float(sizes["weights"])
        self.integer_model = integer_model
        target = self._target_path(trainer)
        if trainer.is_global_zero:
            save(program, target)
            if self.onnx_path is not None:
                from lightning_autoq.export.onnx import save_onnx

                save_onnx(
                    integer_model, integer_model.quantize_input(batches[0][:1]), self.onnx_path
                )
            rank_zero_info(
                f"IntegerExport: wrote {target} ({target.stat().st_size} bytes; "
                f"packed weights {sizes['weights']} bytes); checked ({self.scales}) on "
                f"{len(batches)} batches; {self.metrics}"
            )
            for logger in trainer.loggers:
                logger.log_metrics(self.metrics, step=trainer.global_step)
            rows = [[row[c] for c in REPORT_COLUMNS] for row in program.report]
            log_table(trainer.loggers, "integer/layers", REPORT_COLUMNS, rows)
        trainer.strategy.barrier("IntegerExport")  # the file exists once any rank goes on
        self.written = target
        return integer_model


def _validation_loader(trainer: L.Trainer) -> DataLoader:
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    if loaders is None:  # no validation loop: the training data
        loaders = trainer.train_dataloader
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        raise ExportError("IntegerExport needs validation data (val_dataloaders or a datamodule)")
    return loaders


def _inputs(batch: Any) -> Tensor:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, Tensor):
        raise ExportError(f"a validation batch should start with an input tensor, got {type(x)}")
    return x.cpu()


@torch.no_grad()
def _accuracies(
    simulation: nn.Module, integer_model: IntegerModel, loader: DataLoader
) -> dict[str, float]:
    correct_sim = correct_int = total = 0
    for batch in loader:
        x, y = _inputs(batch), batch[1].cpu()
        correct_sim += int((simulation(x).argmax(1) == y).sum())
        correct_int += int((integer_model.predict(x).argmax(1) == y).sum())
        total += int(y.numel())
    correct_sim, correct_int, total = sum_over_ranks([correct_sim, correct_int, total])
    return {
        "integer/val_acc": correct_int / max(total, 1),
        "integer/simulation_val_acc": correct_sim / max(total, 1),
    }


__all__ = ["IntegerExport"]
