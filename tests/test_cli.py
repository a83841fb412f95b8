"""The ``autoq`` CLI: every recipe parses against the code, and a tiny end-to-end fit."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
import wandb
from lightning.pytorch.cli import LightningCLI

from lightning_autoq.cli import create_cli, main
from lightning_autoq.data import write_idx
from lightning_autoq.models import ImageClassifier, resnet20

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.rglob("*.yaml"))
FP_RECIPE = RECIPES_DIR / "fashion_mnist" / "resnet20_fp.yaml"
W4A4_RECIPE = RECIPES_DIR / "fashion_mnist" / "resnet20_w4a4.yaml"
WANDB_RECIPE = RECIPES_DIR / "fashion_mnist" / "resnet20_w4a4_wandb.yaml"


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when ``sys.argv`` holds arguments besides ``args``."""
    monkeypatch.setattr(sys, "argv", ["autoq"])


class ParseOnlyCLI(LightningCLI):
    """Parses and type-checks the configuration, instantiates nothing."""

    def instantiate_classes(self) -> None:
        pass


def test_recipes_exist() -> None:
    assert FP_RECIPE in RECIPES and W4A4_RECIPE in RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_recipe_parses(recipe: Path) -> None:
    cli = create_cli(["-c", str(recipe)], run=False, cli_class=ParseOnlyCLI)
    config = cli.config
    assert config.model.model.class_path
    assert config.data.class_path
    assert config.trainer.max_epochs > 0


def test_unknown_recipe_key_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(FP_RECIPE.read_text().replace("shortcut: A", "shortcut: A\n      depthh: 20"))
    with pytest.raises(SystemExit):
        create_cli(["-c", str(bad)], run=False, cli_class=ParseOnlyCLI)
    assert "depthh" in capsys.readouterr().err


def test_help_exits_cleanly(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "fit" in capsys.readouterr().out


def write_fake_fashion_mnist(folder: Path) -> None:
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def tiny_fit_args(recipe: Path, data_dir: Path) -> list[str]:
    return [
        "fit",
        "-c",
        str(recipe),
        f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.download=false",
        "--data.init_args.val_size=16",
        "--data.init_args.batch_size=16",
        "--model.model.init_args.width=4",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh working directory (recipes write to ``runs/`` under it) with fake data."""
    root = tmp_path_factory.mktemp("cli")
    write_fake_fashion_mnist(root / "fake-fashion-mnist")
    previous = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def fp_checkpoint(workdir: Path) -> Path:
    with mock.patch.object(sys, "argv", ["autoq"]):
        main(tiny_fit_args(FP_RECIPE, workdir / "fake-fashion-mnist"))
    return workdir / "runs" / "fashion_mnist" / "resnet20_fp" / "checkpoints" / "last.ckpt"


def test_main_fits_fp_recipe(workdir: Path, fp_checkpoint: Path) -> None:
    run_dir = workdir / "runs" / "fashion_mnist" / "resnet20_fp"
    assert fp_checkpoint.is_file()
    assert list(run_dir.glob("checkpoints/best-*.ckpt"))
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(header)
    assert list(run_dir.glob("csv/version_*/config.yaml"))
    # the checkpoint written through the CLI loads with weights_only=True via init_checkpoint
    net = resnet20(in_channels=1, width=4)
    loaded = ImageClassifier(net, init_checkpoint=str(fp_checkpoint))
    saved = torch.load(fp_checkpoint, weights_only=True)["state_dict"]
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"]), key


def test_main_fits_w4a4_recipe_from_fp_checkpoint(workdir: Path, fp_checkpoint: Path) -> None:
    main(tiny_fit_args(W4A4_RECIPE, workdir / "fake-fashion-mnist"))
    checkpoint = workdir / "runs" / "fashion_mnist" / "resnet20_w4a4" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert any("_quant." in key for key in saved["state_dict"])
    # quantizer parameters, BN and biases without decay: only the 19 conv + 1 fc weights decay
    decay, no_decay = saved["optimizer_states"][0]["param_groups"]
    assert len(decay["params"]) == 20 and decay["weight_decay"] == 1e-4
    assert no_decay["weight_decay"] == 0.0


def test_wandb_recipe_runs_offline(
    workdir: Path, fp_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The W&B recipe needs no network: an offline run with metrics and the layer table."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        main(tiny_fit_args(WANDB_RECIPE, workdir / "fake-fashion-mnist"))
    finally:
        wandb.finish()  # WandbLogger reuses a global run left active
    run_dir = workdir / "runs" / "fashion_mnist" / "resnet20_w4a4_wandb"
    (offline_run,) = run_dir.glob("wandb/offline-run-*")
    # (The run's .wandb log is written asynchronously by wandb's service: not asserted.)
    assert list(offline_run.glob("files/media/table/autoq/layers_*.table.json"))
