"""Three small pipelines that together use every callback, and a probe of each rank's state.

* AutoQNN: Quantize -> SchemeSearch -> PrecisionLearning (https://arxiv.org/abs/2304.03782)
* IOIQ: Quantize(INT-SE) -> BatchNormLock -> IncrementalQuantization -> IntegerExport
* QAT: Quantize(LSQ) + OscillationDampening + OscillationFreezing + KnowledgeDistillation
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock
from lightning_autoq.callbacks.distillation import KnowledgeDistillation
from lightning_autoq.callbacks.incremental import IncrementalQuantization
from lightning_autoq.callbacks.integer_export import IntegerExport
from lightning_autoq.callbacks.oscillation import OscillationDampening, OscillationFreezing
from lightning_autoq.callbacks.precision_learning import PrecisionLearning
from lightning_autoq.callbacks.quantize import Quantize
from lightning_autoq.callbacks.scheme_search import SchemeSearch
from lightning_autoq.convert import layer_configs
from lightning_autoq.quant import Quantizer
from tests.callbacks.tiny import TinyNet, tiny_loader

# Uniform schemes only, so that PrecisionLearning can learn the bits of whichever is chosen.
SEARCH_SCHEMES = ("clip", "zoom", "fixed_point")
AUTOQNN_POLICY = QuantPolicy(LayerConfig("clip", weight_bits=6, act_bits=6), first_last_bits=None)
# benchmarks/ioiq.py's ioiq_policy at 4 bits: INT-SE weights and inputs, 8-bit INT-SE bias,
# first and last layers at 8 bits.
IOIQ_POLICY = QuantPolicy(
    LayerConfig("int_se", 4, 4, bias_bits=8, scheme_options={"candidates": 2}),
    first_last_bits=8,
)
QAT_POLICY = QuantPolicy(LayerConfig("lsq", weight_bits=3, act_bits=4))
EXPORT_FILE = "tiny.int.safetensors"


def search_loader() -> DataLoader:
    """Held-out batches of SchemeSearch's theta steps (not the training batches)."""
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    )
    return DataLoader(data, batch_size=12)


def autoqnn(root: Path) -> list[L.Callback]:
    """Scheme search in epochs 0-1, bits learned in epochs 2-3, epoch 4 fixed."""
    return [
        Quantize(AUTOQNN_POLICY),
        SchemeSearch(
            0,
            2,
            weight_candidates=SEARCH_SCHEMES,
            act_candidates=SEARCH_SCHEMES,
            search_dataloader=search_loader(),
            lr=0.05,
        ),
        PrecisionLearning(2, 4, weight_budget_bits=3.0, gamma=50.0, lr=0.2),
    ]


def ioiq(root: Path, strategy: str = "magnitude") -> list[L.Callback]:
    """BN learns in epoch 0, locks at 1; 50 / 75 / 100 % of the weights frozen in epochs 1-3."""
    return [
        Quantize(IOIQ_POLICY),
        BatchNormLock(lock_epoch=1),
        IncrementalQuantization([0.5, 0.75, 1.0], strategy=strategy, start_epoch=1),  # type: ignore[arg-type]
        IntegerExport(path=str(root / EXPORT_FILE)),
    ]


def qat(root: Path) -> list[L.Callback]:
    """LSQ at 3 bits with dampening, freezing (a low threshold: some weights do freeze) and KD."""
    return [
        Quantize(QAT_POLICY),
        OscillationDampening(weight=1e-2, start_weight=1e-2, schedule="constant"),
        OscillationFreezing(threshold_start=0.05, threshold_end=0.05, momentum=0.1, bn_batches=2),
        KnowledgeDistillation(temperature=2.0, alpha=0.5),
    ]


@dataclass(frozen=True)
class Pipeline:
    name: str
    epochs: int
    build: Callable[[Path], list[L.Callback]]


PIPELINES = {
    "autoqnn": Pipeline("autoqnn", 5, autoqnn),
    "ioiq_magnitude": Pipeline("ioiq_magnitude", 4, lambda root: ioiq(root, "magnitude")),
    "ioiq_random": Pipeline("ioiq_random", 4, lambda root: ioiq(root, "random")),
    "qat": Pipeline("qat", 3, qat),
}


def make_trainer(root: Path, epochs: int, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer on two batches per epoch, no logger, no checkpoints unless asked."""
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("accelerator", "cpu")
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().clone()


def running_statistics(pl_module: L.LightningModule) -> list[str]:
    """State-dict keys that every training forward updates from its own batch: batch-norm
    statistics and activation quantizers' running ranges. Under DDP each rank's copy holds its
    last batch's update until DDP broadcasts rank 0's at the next forward."""
    keys = []
    for prefix, module in pl_module.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            names = ["running_mean", "running_var", "num_batches_tracked"]
        elif isinstance(module, Quantizer) and module.kind == "activation":
            names = [n for n, _ in module.named_buffers(recurse=False)]
            names = [n for n in names if n not in ("initialized", "signed_state")]
        else:
            continue
        keys += [f"{prefix}.{n}" for n in names]
    return keys


def final_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """Everything a run decided: weights and buffers, schemes, thetas, bits, frozen flags,
    the layers' policy, export metrics."""
    state: dict[str, Any] = {
        "state_dict": {k: _cpu(v) for k, v in pl_module.state_dict().items()},
        "policy": QuantPolicy.explicit(layer_configs(pl_module)).to_dict(),
        "running": running_statistics(pl_module),
    }
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, SchemeSearch):
            state["schemes"] = cb.chosen_schemes()
            state["thetas"] = [_cpu(t) for t in cb.thetas()]
            state["search_policy"] = None if cb.policy is None else cb.policy.to_dict()
        elif isinstance(cb, PrecisionLearning):
            state["bits"] = cb.current_bits()
            state["bits_policy"] = None if cb.policy is None else cb.policy.to_dict()
            state["bits_frozen"] = cb.frozen
        elif isinstance(cb, OscillationFreezing):
            state["frozen"] = {n: _cpu(s["frozen"]) for n, s in cb.state.items()}
            state["frequency"] = {n: _cpu(s["frequency"]) for n, s in cb.state.items()}
        elif isinstance(cb, OscillationDampening):
            state["dampening_loss"] = cb.last_loss
        elif isinstance(cb, KnowledgeDistillation):
            assert cb.teacher is not None
            state["teacher"] = {k: _cpu(v) for k, v in cb.teacher.state_dict().items()}
            state["kd_loss"] = None if cb.last_loss is None else float(cb.last_loss)
        elif isinstance(cb, IntegerExport):
            state["export_metrics"] = dict(cb.metrics)
            state["export_written"] = None if cb.written is None else str(cb.written)
    return state


class Snapshot(L.Callback):
    """Saves :func:`final_state` to ``<folder>/rank<r>.pt`` at the end of fit (after export).

    List it last: ``on_fit_end`` hooks run in list order, so the other callbacks are done.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(final_state(trainer, pl_module), self.folder / f"rank{trainer.global_rank}.pt")


def fit(
    pipeline: Pipeline,
    root: Path,
    extra: list[L.Callback] | None = None,
    ckpt_path: Path | None = None,
    **kwargs: Any,
) -> tuple[TinyNet, list[L.Callback]]:
    """Fit ``pipeline`` on TinyNet from seed 0; returns the module and the callbacks."""
    L.seed_everything(0)
    module = TinyNet()
    callbacks = pipeline.build(root)
    trainer = make_trainer(root, pipeline.epochs, [*callbacks, *(extra or [])], **kwargs)
    trainer.fit(module, tiny_loader(), ckpt_path=ckpt_path)
    return module, callbacks
