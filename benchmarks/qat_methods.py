"""Benchmark of the QAT methods (REFERENCES §4) on Fashion-MNIST ResNet-20.

A float ResNet-20 is trained for ``--fp-epochs`` epochs; then every method fine-tunes a copy
of it for the same ``--epochs`` at W2A2, W3A3 and W4A4 (first conv and last linear at 8-bit
LSQ for every method) with the same optimizer, schedule and images. Reported per method and
bit-width: the test accuracy and the median training-step time relative to the float model's
(same run settings, measured in the same process).

Methods: ``lsq`` (the baseline), ``lsq_plus``, ``pact`` (PACT activations, DoReFa weights,
as in the PACT paper), ``dorefa``, ``apot``, ``lq_nets``, ``n2uq``, and LSQ with each
callback: ``dampening`` (OscillationDampening), ``freezing`` (OscillationFreezing),
``distillation`` (KnowledgeDistillation from the float model).

    python benchmarks/qat_methods.py --quick                    # smoke test: subset, 1 epoch
    python benchmarks/qat_methods.py --device cuda --epochs 15  # the full comparison

Writes ``benchmarks/results/qat_methods.json`` (atomically).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_autoq import LayerConfig, QuantPolicy  # noqa: E402
from lightning_autoq.callbacks.distillation import KnowledgeDistillation  # noqa: E402
from lightning_autoq.callbacks.oscillation import (  # noqa: E402
    OscillationDampening,
    OscillationFreezing,
)
from lightning_autoq.callbacks.quantize import Quantize  # noqa: E402
from lightning_autoq.data import FashionMNISTDataModule  # noqa: E402
from lightning_autoq.models import ImageClassifier, resnet20  # noqa: E402
from lightning_autoq.utils.benchmarking import (  # noqa: E402
    StepTimer,
    accelerator,
    add_run_arguments,
    require_device,
    write_json,
)

RESULTS = ROOT / "benchmarks" / "results" / "qat_methods.json"
DEVICES = ("auto", "cpu", "cuda")

#: method -> (weight scheme, activation scheme, callback factory name or None)
METHODS: dict[str, tuple[str, str, str | None]] = {
    "lsq": ("lsq", "lsq", None),
    "lsq_plus": ("lsq_plus", "lsq_plus", None),
    "pact": ("dorefa", "pact", None),
    "dorefa": ("dorefa", "dorefa", None),
    "apot": ("apot", "apot", None),
    "lq_nets": ("lq_nets", "lq_nets", None),
    "n2uq": ("n2uq", "n2uq", None),
    "dampening": ("lsq", "lsq", "dampening"),
    "freezing": ("lsq", "lsq", "freezing"),
    "distillation": ("lsq", "lsq", "distillation"),
}


def policy(method: str, bits: int) -> QuantPolicy:
    """The method's schemes at ``bits`` inside; first conv and last linear 8-bit LSQ."""
    weight, act = METHODS[method][:2]
    edges = {"scheme": "lsq", "act_scheme": "lsq"}
    return QuantPolicy(
        LayerConfig(weight, bits, bits, act_scheme=act),
        first_last_bits=8,
        overrides={"conv1": edges, "fc": edges},
    )


def callbacks_for(method: str) -> list[L.Callback]:
    kind = METHODS[method][2]
    if kind == "dampening":
        return [OscillationDampening(weight=1e-3)]
    if kind == "freezing":
        return [OscillationFreezing(bn_batches=20)]
    if kind == "distillation":
        return [KnowledgeDistillation(temperature=4.0, alpha=0.5, module_name="model")]
    return []


def datamodule(args: argparse.Namespace) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(
        args.data_dir,
        batch_size=args.batch_size,
        val_size=0,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        augment=not args.quick,
        download=False,
    )


def fit(
    args: argparse.Namespace, module: ImageClassifier, callbacks: list[L.Callback], epochs: int
) -> tuple[float, float]:
    """Train ``module`` for ``epochs``; its test accuracy and median step time."""
    L.seed_everything(0, verbose=False)
    dm = datamodule(args)
    timer = StepTimer(skip=2)
    trainer = L.Trainer(
        callbacks=[timer, *callbacks],
        max_epochs=epochs,
        accelerator=accelerator(args.device),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out_dir,
    )
    trainer.fit(module, datamodule=dm)
    acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
    return acc, timer.median


def classifier(args: argparse.Namespace, lr: float) -> ImageClassifier:
    return ImageClassifier(
        resnet20(in_channels=1, width=args.width), lr=lr, weight_decay=1e-4, optimizer="sgd"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="subset, 1 epoch: a smoke test")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=15, help="QAT epochs of every method")
    p.add_argument("--fp-epochs", type=int, default=15, help="epochs of the float model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01, help="QAT peak learning rate")
    p.add_argument("--fp-lr", type=float, default=0.1)
    add_run_arguments(p, RESULTS, "runs/benchmarks/qat_methods")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.fp_epochs = 1, 1
        args.train_subset = args.train_subset or 1000
        args.test_subset = args.test_subset or 500
    require_device(p, args.device)
    if args.epochs < 1 or args.fp_epochs < 1:
        p.error(f"--epochs={args.epochs} and --fp-epochs={args.fp_epochs} must be >= 1")
    bad = [b for b in args.bits if not 2 <= b <= 4]
    if bad:
        p.error(f"--bits {bad}: allowed 2, 3, 4 (the range every method supports)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    start = time.perf_counter()
    print("== float", flush=True)
    fp_module = classifier(args, args.fp_lr)
    fp_acc, fp_step = fit(args, fp_module, [], args.fp_epochs)
    print(f"float: acc {fp_acc:.4f}, step {fp_step * 1e3:.1f} ms", flush=True)
    fp_state = copy.deepcopy(fp_module.model.state_dict())
    results: dict[str, dict[str, Any]] = {}
    for bits in args.bits:
        row: dict[str, Any] = {}
        for method in args.methods:
            module = classifier(args, args.lr)
            module.model.load_state_dict(fp_state)
            callbacks = [Quantize(policy(method, bits), "model"), *callbacks_for(method)]
            acc, step = fit(args, module, callbacks, args.epochs)
            row[method] = {"test_acc": acc, "step_s": step, "step_x_float": step / fp_step}
            print(
                f"W{bits}A{bits} {method:13s} acc {acc:.4f}  step {step * 1e3:7.1f} ms "
                f"({step / fp_step:.2f}x float)",
                flush=True,
            )
        results[f"w{bits}a{bits}"] = row
    report = {
        "benchmark": "qat_methods",
        "quick": args.quick,
        "device": "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"out", "out_dir"}
        },
        "float": {"test_acc": fp_acc, "step_s": fp_step},
        "results": results,
        "wall_s": time.perf_counter() - start,
    }
    out = args.out
    write_json(report, out)
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
