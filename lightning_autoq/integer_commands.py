"""``autoq export`` and ``autoq run-integer``: export a checkpoint, run the integer model.

``autoq export -c RECIPE.yaml --ckpt_path CKPT [--output FILE]`` rebuilds the recipe's model
and callbacks (so the quantized structure exists), restores the checkpoint, and runs the
:class:`~lightning_autoq.callbacks.integer_export.IntegerExport` callback through one
validation pass. Any other ``--key value`` is passed to the recipe as an override.

``autoq run-integer FILE -c RECIPE.yaml [--split test]`` evaluates an exported file with
:mod:`lightning_autoq.runtime` on the recipe's data and prints the accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lightning_autoq.callbacks.integer_export import IntegerExport
from lightning_autoq.cli import create_cli
from lightning_autoq.export.integer import SCALES
from lightning_autoq.runtime import IntegerModel, count_correct, load


def _recipe_args(configs: list[str], rest: list[str]) -> list[str]:
    args: list[str] = []
    for config in configs:
        args += ["-c", config]
    return args + rest


def export_main(argv: list[str]) -> dict[str, float]:
    """``autoq export``; returns the logged metrics."""
    parser = argparse.ArgumentParser(prog="autoq export", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="recipe YAML")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint of that recipe's run")
    parser.add_argument("--output", default=None, help="file to write (.safetensors)")
    parser.add_argument("--check_batches", type=int, default=2)
    parser.add_argument(
        "--scales", choices=SCALES, default="power_of_two", help="dyadic: also LSQ, clip"
    )
    parser.add_argument("--onnx", default=None, help="also write the integer ONNX model here")
    args, rest = parser.parse_known_args(argv)
    cli = create_cli(_recipe_args(args.config, rest), run=False)
    callback = IntegerExport(
        path=args.output, check_batches=args.check_batches, scales=args.scales, onnx_path=args.onnx
    )
    cli.trainer.callbacks.append(callback)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path)
    print(json.dumps({"written": str(callback.written), **callback.metrics}))
    return callback.metrics


@torch.no_grad()
def run_integer_main(argv: list[str]) -> float:
    """``autoq run-integer``; returns the accuracy."""
    parser = argparse.ArgumentParser(prog="autoq run-integer", description="evaluate a file")
    parser.add_argument("model", help="an exported .safetensors file")
    parser.add_argument("-c", "--config", action="append", required=True, help="recipe YAML")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    args, rest = parser.parse_known_args(argv)
    model = IntegerModel(load(args.model))
    datamodule = create_cli(_recipe_args(args.config, rest), run=False).datamodule
    datamodule.prepare_data()
    datamodule.setup("validate" if args.split == "val" else "test")
    loader = datamodule.val_dataloader() if args.split == "val" else datamodule.test_dataloader()
    start = time.perf_counter()
    correct, total = count_correct(model.predict, loader)
    seconds = time.perf_counter() - start
    accuracy = correct / max(total, 1)
    print(
        json.dumps(
            {
                "model": args.model,
                "split": args.split,
                "images": total,
                "accuracy": accuracy,
                "seconds": round(seconds, 2),
            }
        )
    )
    return accuracy


COMMANDS = {"export": export_main, "run-integer": run_integer_main}
