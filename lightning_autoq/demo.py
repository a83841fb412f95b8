"""``make demo``: the quick-start pipeline on Fashion-MNIST, run through the recipes.

Each stage is a recipe under ``recipes/demo/`` run exactly as ``autoq fit -c RECIPE`` would
run it, then tested on the 10k test images. Today: train a float ResNet-20, quantize it to
W4A4 with the :class:`~lightning_autoq.callbacks.Quantize` callback and fine-tune one epoch;
a control stage fine-tunes the float model for the same epoch, so the quantized model is
compared with a float model trained exactly as long. The script prints the test
accuracies and writes them to ``runs/demo/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning_autoq.cli import create_cli
from lightning_autoq.convert import quantized_layers, weight_size_bits

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
STAGES: tuple[tuple[str, str], ...] = (
    ("FP32", "fashion_mnist_fp.yaml"),
    ("FP32+1", "fashion_mnist_fp_finetune.yaml"),
    ("W4A4+1", "fashion_mnist_w4a4.yaml"),
)


@dataclass
class StageResult:
    stage: str
    recipe: str
    test_acc: float
    weight_kib: float
    seconds: float


def run_stage(stage: str, recipe: Path) -> StageResult:
    """Fit the recipe and test the final weights."""
    start = time.perf_counter()
    cli = create_cli(["-c", str(recipe)], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    model = cli.model.model
    layers = quantized_layers(model)
    bits = weight_size_bits(model) if layers else 32 * sum(p.numel() for p in model.parameters())
    return StageResult(
        stage=stage,
        recipe=str(recipe.relative_to(RECIPES.parents[1])),
        test_acc=float(metrics["test/acc"]),
        weight_kib=bits / 8 / 1024,
        seconds=time.perf_counter() - start,
    )


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
    control, quant = results[-2], results[-1]
    print(
        f"{quant.stage} - {control.stage} (same training): "
        f"{100 * (quant.test_acc - control.test_acc):+.2f} points"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"summary written to {args.out}")


if __name__ == "__main__":
    main()
