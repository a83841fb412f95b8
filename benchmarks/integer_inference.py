"""Integer-only inference of ResNet-20 on Fashion-MNIST: accuracy, file size and latency.

    python benchmarks/integer_inference.py            # width 16: FP 3 epochs, IOIQ 2 epochs
    python benchmarks/integer_inference.py --quick    # width 8, 4k images, 1 + 1 epochs
    python benchmarks/integer_inference.py --scheme lsq --bits 4   # LSQ W4A4, dyadic export

Steps: train a float ResNet-20; fine-tune it with 8-bit INT-SE weights and activations and
batch norm locked (Quantize + BatchNormLock); export it with IntegerExport. Reports
test accuracy of the float, fake-quantized and integer models (the last two must be equal:
the export is bit-exact; with ``--scheme lsq`` the export uses dyadic multipliers and the
share of test images on which both predict the same class is reported), the file size
against the packed-weight size, and the median latency at batch 1 and 64 of the integer
runtime, float eager PyTorch and onnxruntime (running the float model). Writes
benchmarks/results/integer_inference.json and .png (``_lsq_w4a4`` etc. for other runs).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_autoq import QuantPolicy
from lightning_autoq.callbacks import BatchNormLock, IntegerExport, Quantize
from lightning_autoq.data import FashionMNISTDataModule
from lightning_autoq.models import ImageClassifier, resnet20
from lightning_autoq.runtime import IntegerModel, count_correct, load, packed_size_bytes
from lightning_autoq.utils.benchmarking import write_json

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = {"int_se": "power_of_two", "lsq": "dyadic"}


def policy(scheme: str, bits: int) -> QuantPolicy:
    """``bits``-bit weights and inputs (first and last layers 8); INT-SE gets an 8-bit bias."""
    config = {"scheme": scheme, "weight_bits": bits, "act_bits": bits}
    if scheme == "int_se":
        config["bias_bits"] = 8
    return QuantPolicy(default=config, first_last_bits=8)


def trainer(epochs: int, root: Path, callbacks: list[L.Callback], limit: float) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=limit,
        accelerator="auto",
        devices=1,
    )


def accuracy(predict: Any, loader: Any) -> float:
    correct, total = count_correct(predict, loader)
    return correct / total


@torch.no_grad()
def compare_on(
    simulation: nn.Module, integer_model: IntegerModel, loader: Any
) -> tuple[float, float, float]:
    """One pass: the fake-quantized and integer accuracies, and the share of images on which
    both predict the same class."""
    fake = integer = same = total = 0
    for x, y in loader:
        a, b = simulation(x).argmax(1), integer_model.predict(x).argmax(1)
        fake += int((a == y).sum())
        integer += int((b == y).sum())
        same += int((a == b).sum())
        total += len(y)
    return fake / total, integer / total, same / total


def median_ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def onnx_session(model: nn.Module) -> Any:
    import onnxruntime

    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        torch.randn(1, 1, 28, 28),
        buffer,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}},
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(buffer.getvalue(), options)


def latencies(float_model: nn.Module, integer_model: IntegerModel, repeats: int) -> dict:
    session = onnx_session(float_model)
    rows = {}
    for batch in (1, 64):
        x = torch.randn(batch, 1, 28, 28)
        codes = integer_model.quantize_input(x)
        with torch.no_grad():
            rows[f"batch_{batch}"] = {
                "fp32_eager_ms": median_ms(lambda x=x: float_model(x), repeats),
                "onnxruntime_fp32_ms": median_ms(
                    lambda x=x: session.run(None, {"x": x.numpy()}), repeats
                ),
                "integer_runtime_ms": median_ms(lambda c=codes: integer_model(c), repeats),
            }
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = ["fp32_eager_ms", "onnxruntime_fp32_ms", "integer_runtime_ms"]
    labels = ["FP32 eager", "ORT FP32", "integer runtime"]
    for ax, batch in zip(axes, ("batch_1", "batch_64"), strict=True):
        values = [result["latency"][batch][n] for n in names]
        ax.bar(labels, values, color=["#888", "#58a", "#d62"])
        ax.set_title(f"ResNet-20 latency, {batch.replace('_', ' ')}")
        ax.set_ylabel("ms (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scheme", choices=sorted(SCALES), default="int_se")
    parser.add_argument("--bits", type=int, default=8, choices=range(2, 9), metavar="2..8")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<run>.json")
    args = parser.parse_args()
    run_name = "integer_inference"
    if (args.scheme, args.bits) != ("int_se", 8):
        run_name += f"_{args.scheme}_w{args.bits}a{args.bits}"
    args.out = args.out or RESULTS / f"{run_name}.json"
    width, fp_epochs, q_epochs, limit = (8, 1, 1, 32) if args.quick else (16, 3, 2, 1.0)
    repeats = 10 if args.quick else 50
    L.seed_everything(0)
    root = Path("runs/benchmarks/integer_inference")
    data = FashionMNISTDataModule(batch_size=128, val_size=2000, augment=False, seed=0)
    classifier = ImageClassifier(resnet20(in_channels=1, width=width), lr=0.05, scheduler="none")
    start = time.perf_counter()
    trainer(fp_epochs, root / "fp", [], limit).fit(classifier, datamodule=data)
    data.setup("test")
    test_loader = data.test_dataloader()
    float_model = classifier.model.cpu().eval()
    float_acc = accuracy(float_model, test_loader)
    float_copy = resnet20(in_channels=1, width=width)
    float_copy.load_state_dict(float_model.state_dict())
    float_copy.eval()

    float_model.train()  # Lightning keeps a module's eval mode during fit: train it in train mode
    classifier = ImageClassifier(float_model, lr=0.01, scheduler="cosine")
    path = root / f"resnet20_{args.scheme}_w{args.bits}.int.safetensors"
    export = IntegerExport(path=str(path), check_batches=4, scales=SCALES[args.scheme])  # type: ignore[arg-type]
    quantize = Quantize(policy(args.scheme, args.bits), module_name="model")
    callbacks = [quantize, BatchNormLock(lock_epoch=0), export]
    trainer(q_epochs, root / "int", callbacks, limit).fit(classifier, datamodule=data)
    train_seconds = time.perf_counter() - start

    simulation = classifier.model.cpu().eval()
    integer_model = IntegerModel(load(path))
    fake_acc, int_acc, same = compare_on(simulation, integer_model, test_loader)
    sizes = packed_size_bytes(integer_model.program)
    result = {
        "command": " ".join(["python benchmarks/integer_inference.py", *sys.argv[1:]]),
        "model": f"ResNet-20 width {width}, Fashion-MNIST, W{args.bits}A{args.bits} "
        f"{args.scheme}, BN folded, {SCALES[args.scheme]} export",
        "epochs": {"fp": fp_epochs, "quantized": q_epochs},
        "train_batches_per_epoch": limit,
        "threads": torch.get_num_threads(),
        "test_accuracy": {"fp32": float_acc, "fake_quant": fake_acc, "integer": int_acc},
        "integer_equals_fake_quant": int_acc == fake_acc,
        "same_prediction_share": same,
        "file_bytes": path.stat().st_size,
        "packed_weight_bytes": sizes["weights"],
        "bias_bytes": sizes["other"],
        "fp32_weight_bytes": 4 * sum(p.numel() for p in float_copy.parameters()),
        "max_accumulator_bits": max(r["accumulator_bits"] for r in integer_model.program.report),
        "latency": latencies(float_copy, integer_model, repeats),
        "train_seconds": round(train_seconds, 1),
    }
    write_json(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
