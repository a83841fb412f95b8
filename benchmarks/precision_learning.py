"""Benchmark of AutoQNN's precision learning (QPL, https://arxiv.org/abs/2304.03782).

Fashion-MNIST ResNet-20, weight budgets of 3 and 2.5 bits on average (activations at
``--act-bits``; first and last layers at 8 bits, counted in the average): the learned mixed
policy (``PrecisionLearning`` from ``--bits-start`` bits, then training on with the frozen,
repaired bits) against uniform bits of the same or smaller size (``floor(budget)`` everywhere),
with equal epochs and images: test accuracy, weight size in bytes and the budget check.

    python benchmarks/precision_learning.py                 # full: 20 epochs (QPL 0-9)
    python benchmarks/precision_learning.py --quick         # smoke test: a subset, 2 epochs
    python benchmarks/precision_learning.py --device cuda --epochs 30

Writes ``benchmarks/results/precision_learning.json``.
"""

from __future__ import annotations

import argparse
import math
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
from lightning_autoq.callbacks import Quantize  # noqa: E402
from lightning_autoq.callbacks.precision_learning import PrecisionLearning  # noqa: E402
from lightning_autoq.convert import quantized_layers, weight_size_bits  # noqa: E402
from lightning_autoq.data import FashionMNISTDataModule  # noqa: E402
from lightning_autoq.models import ImageClassifier  # noqa: E402
from lightning_autoq.utils.benchmarking import (  # noqa: E402
    add_model_arguments,
    add_run_arguments,
    resnet20_classifier,
    write_json,
)

RESULTS = ROOT / "benchmarks" / "results" / "precision_learning.json"


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


def policy(scheme: str, weight_bits: int, act_bits: int) -> QuantPolicy:
    return QuantPolicy(LayerConfig(scheme, weight_bits, act_bits), first_last_bits=8)


def run(args: argparse.Namespace, callbacks: list[L.Callback]) -> tuple[float, ImageClassifier]:
    """Train ResNet-20 for ``args.epochs`` epochs with ``callbacks``; test accuracy and model."""
    L.seed_everything(0, verbose=False)
    dm = datamodule(args)
    module = resnet20_classifier(args, lr=args.lr, weight_decay=1e-4)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        accelerator=args.device,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out_dir,
    )
    trainer.fit(module, datamodule=dm)
    acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
    return acc, module


def total_weights(module: ImageClassifier) -> int:
    return sum(layer.weight.numel() for _, layer in quantized_layers(module))  # type: ignore[attr-defined]


def bench_budget(args: argparse.Namespace, budget: float) -> dict[str, Any]:
    print(f"== weight budget {budget} bits on average", flush=True)
    qpl = PrecisionLearning(
        0,
        args.qpl_epochs,
        weight_budget_bits=budget,
        gamma=args.gamma,
        warmup_epochs=args.warmup_epochs,
        ramp_epochs=args.ramp_epochs,
        min_bits=args.min_bits,
        lr=args.bits_lr,
        exclude=["model.conv1", "model.fc"],
        fill_budget=not args.no_fill,
    )
    acc, module = run(args, [Quantize(policy(args.scheme, args.bits_start, args.act_bits)), qpl])
    n = total_weights(module)
    size_bits = weight_size_bits(module)
    policy_file = None
    if qpl.policy is not None:
        policy_file = Path(args.out_dir) / f"precision_policy_w{budget:g}.yaml"
        qpl.policy.save(policy_file)
    learned = {
        "test_acc": acc,
        "policy_file": None if policy_file is None else str(policy_file),
        "size_bytes": size_bits / 8,
        "average_bits": size_bits / n,
        "within_budget": size_bits <= budget * n,
        "bits": qpl.current_bits(),
        "policy": None if qpl.policy is None else qpl.policy.to_dict(),
    }
    print(
        f"learned: acc {acc:.4f}, {size_bits / 8:.0f} B ({size_bits / n:.3f} bits), "
        f"within budget: {learned['within_budget']}",
        flush=True,
    )
    uniform_bits = max(math.floor(budget), args.min_bits)
    acc_u, module_u = run(args, [Quantize(policy(args.scheme, uniform_bits, args.act_bits))])
    size_u = weight_size_bits(module_u)
    uniform = {
        "bits": uniform_bits,
        "test_acc": acc_u,
        "size_bytes": size_u / 8,
        "average_bits": size_u / n,
        "within_budget": size_u <= budget * n,
    }
    print(f"uniform W{uniform_bits}: acc {acc_u:.4f}, {size_u / 8:.0f} B", flush=True)
    return {
        "budget_bits": budget,
        "budget_bytes": budget * n / 8,
        "learned": learned,
        "uniform": uniform,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="subset, 2 epochs: a smoke test")
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 2.5])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--qpl-epochs", type=int, default=10, help="epochs learning bits (from 0)")
    p.add_argument("--scheme", default="clip")
    p.add_argument("--bits-start", type=int, default=4, help="weight bits before learning")
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--min-bits", type=int, default=2)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--ramp-epochs", type=int, default=2)
    p.add_argument("--bits-lr", type=float, default=1e-2)
    p.add_argument("--no-fill", action="store_true", help="keep the learned bits under budget")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    add_model_arguments(p)
    add_run_arguments(p, RESULTS, "runs/benchmarks/precision_learning")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.qpl_epochs = 2, 1
        args.warmup_epochs, args.ramp_epochs = 0, 1
        args.train_subset = args.train_subset or 1000
        args.test_subset = args.test_subset or 500
    if not 0 < args.qpl_epochs <= args.epochs:
        p.error(f"--qpl-epochs={args.qpl_epochs} must be in 1..--epochs ({args.epochs})")
    if any(not 0 < b <= 8 for b in args.budgets):
        p.error(f"--budgets={args.budgets} must be in (0, 8]")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    report = {
        "benchmark": "precision_learning",
        "quick": args.quick,
        "device": "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"out", "out_dir"}
        },
        "results": results,
        "complete": False,
    }
    for budget in args.budgets:  # rewritten after each budget: a cut run keeps its rows
        results[f"w{budget:g}"] = bench_budget(args, budget)
        report["wall_s"] = time.perf_counter() - start
        write_json(report, args.out)
    report["complete"] = True
    write_json(report, args.out)
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
