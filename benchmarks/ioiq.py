"""IOIQ training on Fashion-MNIST ResNet-20: float vs INT-SE incremental quantization.

    python benchmarks/ioiq.py            # full: 15 float epochs, 1 + 4 + 2 epochs per IOIQ run
    python benchmarks/ioiq.py --quick    # smoke test: data subset, 1 epoch per stage
    python benchmarks/ioiq.py --device cuda --epochs 30   # on a GPU, 30 float epochs

Runs, all fine-tuned from the same float model for the same number of epochs: a float
fine-tune (the reference for ``drop_vs_float``); IOIQ at 8, 6 and 4 bits (magnitude masks,
4 exponent candidates); 4 bits with random masks; 4 bits with 1 exponent candidate (the
max-based exponent). Each IOIQ run: 1 epoch learning batch norm, then BN folded and locked
with the schedule 50 / 75 / 87.5 / 100 % (one epoch each), then the tail epochs. First and
last layers at 8 bits. Writes benchmarks/results/ioiq.json and ioiq.png (test accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks import Quantize
from lightning_autoq.callbacks.batchnorm_lock import BatchNormLock
from lightning_autoq.callbacks.incremental import IncrementalQuantization
from lightning_autoq.convert import quantized_layers
from lightning_autoq.data import FashionMNISTDataModule
from lightning_autoq.export import export_integer
from lightning_autoq.models import ImageClassifier, resnet20
from lightning_autoq.utils.benchmarking import DEVICES, accelerator, require_device, write_json

RESULTS = Path(__file__).resolve().parent / "results"
SCHEDULE = (0.5, 0.75, 0.875, 1.0)


_device = "auto"  # set from --device in main()


def _trainer(epochs: int, callbacks: list[L.Callback], root: Path) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator=accelerator(_device),
        devices=1,
    )


def ioiq_policy(bits: int, candidates: int) -> QuantPolicy:
    """INT-SE weights and inputs at ``bits`` (first and last layers 8), 8-bit INT-SE bias."""
    config = LayerConfig(
        "int_se", bits, bits, bias_bits=8, scheme_options={"candidates": candidates}
    )
    return QuantPolicy(config, first_last_bits=8)


def _test_acc(trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule) -> float:
    return float(trainer.test(module, data, verbose=False)[0]["test/acc"])


def _finetune_module(fp_state: dict[str, torch.Tensor]) -> ImageClassifier:
    L.seed_everything(0)
    width = fp_state["conv1.weight"].shape[0]
    module = ImageClassifier(resnet20(in_channels=1, width=width), lr=0.01, weight_decay=1e-4)
    module.model.load_state_dict(fp_state)
    return module


def run_float(
    fp_state: dict[str, torch.Tensor], data: L.LightningDataModule, epochs: int, root: Path
) -> dict[str, Any]:
    """Fine-tune the float model as long as an IOIQ run, without quantization."""
    module = _finetune_module(fp_state)
    trainer = _trainer(epochs, [], root)
    start = time.perf_counter()
    trainer.fit(module, data)
    acc = _test_acc(trainer, module, data)
    return {
        "run": "float fine-tuned",
        "epochs": epochs,
        "test_acc": acc,
        "seconds": round(time.perf_counter() - start, 1),
    }


def run_ioiq(
    fp_state: dict[str, torch.Tensor],
    data: L.LightningDataModule,
    bits: int,
    strategy: str,
    candidates: int,
    tail_epochs: int,
    root: Path,
) -> dict[str, Any]:
    """Fine-tune the float model with IOIQ; returns the test accuracy and settings."""
    module = _finetune_module(fp_state)
    callbacks: list[L.Callback] = [
        Quantize(ioiq_policy(bits, candidates)),
        BatchNormLock(lock_epoch=1),
        IncrementalQuantization(SCHEDULE, strategy, start_epoch=1),  # type: ignore[arg-type]
    ]
    epochs = 1 + len(SCHEDULE) + tail_epochs
    trainer = _trainer(epochs, callbacks, root)
    start = time.perf_counter()
    trainer.fit(module, data)
    acc = _test_acc(trainer, module, data)
    layers = quantized_layers(module)
    fully = all(bool(layer.weight_quant.mask.all()) for _, layer in layers)
    images = next(iter(data.test_dataloader()))[0][:64]
    export_integer(module.model.cpu(), images)  # raises unless bit-exact on these images
    return {
        "integer_export_bit_exact": True,
        "bits": bits,
        "strategy": strategy,
        "candidates": candidates,
        "epochs": epochs,
        "test_acc": acc,
        "fully_quantized": fully,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="data subset, 1 epoch per stage")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--epochs", type=int, default=None, help="float pre-training epochs")
    parser.add_argument("--width", type=int, default=16, help="ResNet-20 width")
    parser.add_argument("--train-subset", type=int, default=None, help="training images")
    args = parser.parse_args()
    require_device(parser, args.device)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs={args.epochs} is not allowed; allowed: >= 1")
    global _device
    _device = args.device
    quick = args.quick
    data = FashionMNISTDataModule(
        data_dir=args.data_dir,
        batch_size=128,
        val_size=256 if quick else 5000,
        train_subset=1024 if quick else args.train_subset,
        test_subset=500 if quick else None,
        augment=not quick,
        download=False,
    )
    root = Path("runs/benchmarks/ioiq")
    fp_epochs, tail = (2, 0) if quick else (15, 2)
    fp_epochs = args.epochs or fp_epochs

    L.seed_everything(0)
    fp = ImageClassifier(resnet20(in_channels=1, width=args.width), lr=0.1)
    trainer = _trainer(fp_epochs, [], root)
    start = time.perf_counter()
    trainer.fit(fp, data)
    fp_acc = _test_acc(trainer, fp, data)
    fp_row = {"run": "float pretrained", "epochs": fp_epochs, "test_acc": fp_acc}
    fp_row["seconds"] = round(time.perf_counter() - start, 1)
    fp_state = {k: v.detach().cpu().clone() for k, v in fp.model.state_dict().items()}

    runs = [(8, "magnitude", 4), (6, "magnitude", 4), (4, "magnitude", 4)]
    runs += [(4, "random", 4), (4, "magnitude", 1)]
    reference = run_float(fp_state, data, 1 + len(SCHEDULE) + tail, root)
    print(json.dumps(reference), flush=True)
    rows = [fp_row, reference]
    report = {
        "command": "python benchmarks/ioiq.py " + " ".join(sys.argv[1:]),
        "quick": quick,
        "width": args.width,
        "train_subset": 1024 if quick else args.train_subset,
        "threads": torch.get_num_threads(),
        "schedule": list(SCHEDULE),
        "complete": False,
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    for bits, strategy, candidates in runs:
        row = run_ioiq(fp_state, data, bits, strategy, candidates, tail, root)
        row["run"] = f"ioiq int{bits} {strategy} c{candidates}"
        row["drop_vs_float"] = round(reference["test_acc"] - row["test_acc"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(report, RESULTS / "ioiq.json")  # a killed run keeps the rows it finished

    report["complete"] = True
    write_json(report, RESULTS / "ioiq.json")
    print(f"{'run':32s} {'test acc':>8s} {'drop':>7s}")
    for row in rows:
        print(f"{row['run']:32s} {row['test_acc']:8.4f} {row.get('drop_vs_float', 0.0):7.4f}")
    _plot(rows, RESULTS / "ioiq.png", quick)


def _plot(rows: list[dict[str, Any]], path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    accs = [100 * r["test_acc"] for r in rows]
    bars = ax.barh([r["run"] for r in rows], accs)
    ax.bar_label(bars, labels=[f"{a:.2f}" for a in accs], padding=3)
    ax.set_xlim(max(0.0, min(accs) - 5), min(100.0, max(accs) + 3))
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("IOIQ, ResNet-20 / Fashion-MNIST" + (" (quick smoke test)" if quick else ""))
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
