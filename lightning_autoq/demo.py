"""``make demo``: the quick-start pipeline on Fashion-MNIST, run through the recipes.

Each stage is a recipe under ``recipes/demo/`` run exactly as ``autoq fit -c RECIPE`` would
run it, then tested on the 10k test images:

1. ``FP32``: a float ResNet-20 (2 epochs).
2. ``FP32+1``: the control, the float model fine-tuned one more epoch.
3. ``W4A4+1``: the float model quantized to W4A4 (LSQ) by the Quantize callback, one epoch.
4. ``AutoQNN``: scheme search (QSS), then learned bit-widths under a 3-bit budget (QPL), then
   fine-tuning, on 20k images; the chosen policy is printed.
5. ``INT8``: IOIQ, 8-bit INT-SE with batch norm locked, one epoch on 20k images; the
   IntegerExport callback writes the integer-only model, which is then run on the test set
   by :mod:`lightning_autoq.runtime` (its accuracy must equal the fake-quantized one).

The script prints the results and writes them to ``runs/demo/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_autoq.callbacks import IntegerExport, PrecisionLearning
from lightning_autoq.cli import create_cli
from lightning_autoq.convert import quantized_layers, weight_size_bits
from lightning_autoq.convert.report import format_table, layer_table
from lightning_autoq.runtime import IntegerModel, count_correct, load, packed_size_bytes

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
STAGES: tuple[tuple[str, str], ...] = (
    ("FP32", "fashion_mnist_fp.yaml"),
    ("FP32+1", "fashion_mnist_fp_finetune.yaml"),
    ("W4A4+1", "fashion_mnist_w4a4.yaml"),
    ("AutoQNN", "fashion_mnist_autoqnn.yaml"),
    ("INT8", "fashion_mnist_int8.yaml"),
)


@dataclass
class StageResult:
    stage: str
    recipe: str
    test_acc: float
    weight_kib: float
    seconds: float
    policy: list[list[object]] = field(default_factory=list)
    integer: dict[str, object] = field(default_factory=dict)


def run_stage(stage: str, recipe: Path) -> StageResult:
    """Fit the recipe and test the final weights (and the integer model, if one is written)."""
    start = time.perf_counter()
    cli = create_cli(["-c", str(recipe)], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    model = cli.model.model
    layers = quantized_layers(model)
    bits = weight_size_bits(model) if layers else 32 * sum(p.numel() for p in model.parameters())
    result = StageResult(
        stage=stage,
        recipe=str(recipe.relative_to(RECIPES.parents[1])),
        test_acc=float(metrics["test/acc"]),
        weight_kib=bits / 8 / 1024,
        seconds=0.0,
    )
    if any(isinstance(cb, PrecisionLearning) for cb in cli.trainer.callbacks):
        result.policy = [[row[0], row[2], row[3], row[5]] for row in layer_table(model)]
    for callback in cli.trainer.callbacks:
        if isinstance(callback, IntegerExport) and callback.written is not None:
            result.integer = evaluate_integer(callback.written, cli.datamodule.test_dataloader())
    result.seconds = time.perf_counter() - start
    return result


def evaluate_integer(path: Path, loader: Iterable[Any]) -> dict[str, object]:
    """Load the exported file with the runtime alone and test it."""
    model = IntegerModel(load(path))
    correct, total = count_correct(model.predict, loader)
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "packed_weight_bytes": packed_size_bytes(model.program)["weights"],
        "test_acc": correct / total,
        "test_correct": correct,
        "test_images": total,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo/summary.json"))
    args = parser.parse_args(argv)
    results = [run_stage(stage, RECIPES / name) for stage, name in STAGES]
    print("\nlightning_autoq demo: ResNet-20 on Fashion-MNIST (10k test images)")
    print(f"{'stage':<7} {'test acc':>9} {'weights':>11} {'time':>7}  recipe")
    for r in results:
        print(
            f"{r.stage:<7} {100 * r.test_acc:>8.2f}% {r.weight_kib:>7.1f} KiB "
            f"{r.seconds:>6.0f}s  {r.recipe}"
        )
    by_stage = {r.stage: r for r in results}
    control, quant = by_stage["FP32+1"], by_stage["W4A4+1"]
    print(
        f"{quant.stage} - {control.stage} (same training): "
        f"{100 * (quant.test_acc - control.test_acc):+.2f} points"
    )
    autoqnn = by_stage["AutoQNN"]
    print("\nAutoQNN policy (scheme search, then bits learned under a 3-bit average budget):")
    print(format_table(autoqnn.policy, ("layer", "scheme", "weight_bits", "act_bits")))
    int8 = by_stage["INT8"]
    integer = int8.integer
    # trainer.test reports a float32 mean: compare the counts of correct images
    same_count = round(int8.test_acc * int(integer["test_images"])) == integer["test_correct"]
    print(
        f"\nInteger-only model {integer['file']}: {integer['file_bytes']} bytes "
        f"(packed weights {integer['packed_weight_bytes']}); test accuracy "
        f"{100 * float(integer['test_acc']):.2f}% with integer arithmetic only vs "
        f"{100 * int8.test_acc:.2f}% fake-quantized "
        f"({'the same' if same_count else 'DIFFERENT'} number of correct images)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"summary written to {args.out}")


if __name__ == "__main__":
    main()
