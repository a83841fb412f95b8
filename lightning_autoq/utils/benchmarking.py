"""Helpers shared by the scripts in ``benchmarks/``: step timing, devices, result files."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_autoq.models import ImageClassifier, resnet20
from lightning_autoq.models.checkpoint import load_model_weights

#: ``--device`` choices of the benchmark scripts.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def add_run_arguments(parser: argparse.ArgumentParser, results: Path, out_dir: str) -> None:
    """The options every training benchmark takes: data subsets, device, output places."""
    parser.add_argument("--train-subset", type=int, default=None, help="training images")
    parser.add_argument("--test-subset", type=int, default=None, help="test images")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    parser.add_argument("--device", "--accelerator", dest="device", default="auto", choices=DEVICES)
    parser.add_argument("--out", type=Path, default=results, help="the result JSON")
    parser.add_argument("--out-dir", default=out_dir, help="run folder (checkpoints, logs)")


def add_model_arguments(parser: argparse.ArgumentParser, width: int = 16) -> None:
    """The ResNet-20 options: its width and the float weights it starts from."""
    parser.add_argument("--width", type=int, default=width, help="ResNet-20 width")
    parser.add_argument(
        "--init-checkpoint",
        default=None,
        help="float weights to start from (a Lightning .ckpt or a state_dict file)",
    )


def resnet20_classifier(args: argparse.Namespace, **options: Any) -> ImageClassifier:
    """Fashion-MNIST ResNet-20 of ``args.width``, loaded from ``args.init_checkpoint`` if set.

    ``options`` go to :class:`~lightning_autoq.models.ImageClassifier` (lr, weight decay...).
    """
    model = resnet20(in_channels=1, width=args.width)
    if args.init_checkpoint:
        load_model_weights(model, args.init_checkpoint)
    return ImageClassifier(model, **options)


def require_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Stop with a parser error when ``--device cuda`` has no CUDA device."""
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")


def accelerator(device: str) -> str:
    """Lightning's accelerator name for ``--device``."""
    return {"cuda": "gpu"}.get(device, device)


class StepTimer(L.Callback):
    """Wall time of each training step, from batch start (before any theta step) to its end.

    Synchronizes CUDA around each step, so GPU times are real; the first ``skip`` steps
    (warm-up) are not recorded.
    """

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0
        self._seen = 0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._seen += 1
        if self._seen > self.skip:
            self.times.append(time.perf_counter() - self._start)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def write_json(report: dict[str, Any], path: Path) -> Path:
    """Write ``report`` as indented JSON atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path


__all__ = [
    "DEVICES",
    "StepTimer",
    "accelerator",
    "add_model_arguments",
    "add_run_arguments",
    "require_device",
    "resnet20_classifier",
    "write_json",
]
