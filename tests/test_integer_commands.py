"""``autoq export`` and ``autoq run-integer`` on a tiny INT-SE run with fake data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_autoq.cli import main
from lightning_autoq.runtime import IntegerModel, load
from tests.test_cli import tiny_fit_args, write_fake_fashion_mnist

RECIPE = {
    "seed_everything": 0,
    "trainer": {
        "callbacks": [
            {
                "class_path": "lightning_autoq.callbacks.Quantize",
                "init_args": {
                    "policy": {"default": {"scheme": "int_se", "weight_bits": 4, "act_bits": 4}}
                },
            },
            {"class_path": "lightning_autoq.callbacks.BatchNormLock"},
            {
                "class_path": "lightning_autoq.callbacks.IntegerExport",
                "init_args": {"path": "runs/tiny/fit.int.safetensors"},
            },
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": "runs/tiny/checkpoints", "save_last": True},
            },
        ],
        "default_root_dir": "runs/tiny",
    },
    "model": {
        "model": {
            "class_path": "lightning_autoq.models.CifarResNet",
            "init_args": {"depth": 8, "num_classes": 10, "in_channels": 1},
        }
    },
    "data": {"class_path": "lightning_autoq.data.FashionMNISTDataModule"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("intcli")
    write_fake_fashion_mnist(root / "data")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["autoq"])
        main(tiny_fit_args(recipe, root / "data"))
    return root


def data_args(root: Path) -> list[str]:
    return [
        f"--data.init_args.data_dir={root / 'data'}",
        "--data.init_args.download=false",
        "--data.init_args.val_size=16",
        "--data.init_args.batch_size=16",
        "--model.model.init_args.width=4",
    ]


def test_fit_with_the_callback_writes_the_file(run: Path) -> None:
    assert (run / "runs" / "tiny" / "fit.int.safetensors").is_file()


def test_export_command_reproduces_the_fit_export(run: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(run)
    monkeypatch.setattr(sys, "argv", ["autoq"])
    out = run / "exported.safetensors"
    ckpt = run / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    main(["export", "-c", "recipe.yaml", "--ckpt_path", str(ckpt), "--output", str(out),
          *data_args(run)])  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["written"] == str(out)
    a = IntegerModel(load(out))
    b = IntegerModel(load(run / "runs" / "tiny" / "fit.int.safetensors"))
    x = torch.randint(*a.program.input_range, (4, 1, 28, 28))
    assert torch.equal(a(x), b(x))


def test_run_integer_command_evaluates_the_test_split(run: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(run)
    monkeypatch.setattr(sys, "argv", ["autoq"])
    main(["run-integer", "runs/tiny/fit.int.safetensors", "-c", "recipe.yaml", *data_args(run)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 16 and 0.0 <= result["accuracy"] <= 1.0


def test_export_command_also_writes_the_onnx_model(run: Path, monkeypatch, capsys) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(run)
    monkeypatch.setattr(sys, "argv", ["autoq"])
    out, onnx_file = run / "with_onnx.safetensors", run / "model.onnx"
    ckpt = run / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    main(["export", "-c", "recipe.yaml", "--ckpt_path", str(ckpt), "--output", str(out),
          "--onnx", str(onnx_file), *data_args(run)])  # fmt: skip
    model = IntegerModel(load(out))
    x = torch.randint(*model.program.input_range, (3, 1, 28, 28), dtype=torch.int32)
    (got,) = onnxruntime.InferenceSession(str(onnx_file)).run(None, {"input": x.numpy()})
    assert torch.equal(torch.from_numpy(got), model(x))
