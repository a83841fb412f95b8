"""The ``autoq`` command: LightningCLI over :class:`~lightning_autoq.models.ImageClassifier`.

Run a recipe with ``autoq fit -c recipes/fashion_mnist/resnet20_fp.yaml`` (or
``python -m lightning_autoq fit -c ...``); any key can be overridden on the command line,
e.g. ``--trainer.max_epochs 2 --data.train_subset 5000``. The model is always an
``ImageClassifier`` whose ``model.model`` is any ``nn.Module`` given by ``class_path``; the
data is any ``LightningDataModule`` given by ``class_path``; quantization and the rest of
the pipeline are ``trainer.callbacks``.

``autoq export -c RECIPE --ckpt_path CKPT`` writes the integer-only model of a checkpoint and
``autoq run-integer FILE -c RECIPE`` evaluates it (:mod:`lightning_autoq.integer_commands`).
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningCLI

from lightning_autoq.models.classifier import ImageClassifier


def create_cli(
    args: ArgsType = None, run: bool = True, cli_class: type[LightningCLI] = LightningCLI
) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv``), instantiate, and run the subcommand if ``run``.

    Args:
        args: command-line arguments, e.g. ``["fit", "-c", "recipe.yaml"]``. With
            ``run=False`` there is no subcommand: ``["-c", "recipe.yaml"]``.
        run: run the subcommand; otherwise return the CLI with ``model``, ``datamodule`` and
            ``trainer`` instantiated, for use from Python.
        cli_class: ``LightningCLI`` or a subclass (to customize parsing or instantiation).
    """
    return cli_class(
        ImageClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of ``autoq`` and ``python -m lightning_autoq``.

    ``export`` and ``run-integer`` are this package's commands (see
    :mod:`lightning_autoq.integer_commands`); everything else goes to LightningCLI.
    """
    argv = list(sys.argv[1:] if args is None else args)  # type: ignore[arg-type]
    if argv and argv[0] in ("export", "run-integer"):
        from lightning_autoq.integer_commands import COMMANDS

        COMMANDS[argv[0]](argv[1:])
        return
    create_cli(args)


if __name__ == "__main__":
    main()
