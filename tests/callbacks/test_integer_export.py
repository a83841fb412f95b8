"""IntegerExport: at the end of fit the integer model is written, checked and evaluated."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks import BatchNormLock, Quantize
from lightning_autoq.callbacks.integer_export import IntegerExport
from lightning_autoq.export import ExportError, lock_for_export
from lightning_autoq.runtime import IntegerModel, load
from tests.callbacks.tiny import TinyNet, tiny_loader

INT_SE = QuantPolicy(LayerConfig("int_se", weight_bits=4, act_bits=4, bias_bits=8))


def fit(tmp_path: Path, policy: QuantPolicy, export: IntegerExport, **callbacks) -> TinyNet:
    model = TinyNet()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[Quantize(policy, module_name="model"), *callbacks.values(), export],
        default_root_dir=tmp_path,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(model, train_dataloaders=tiny_loader(), val_dataloaders=tiny_loader())
    return model


def test_fit_writes_a_checked_integer_model(tmp_path: Path) -> None:
    export = IntegerExport(path=str(tmp_path / "out" / "tiny.int.safetensors"))
    model = fit(tmp_path, INT_SE, export, lock=BatchNormLock(lock_epoch=1))
    assert export.written == tmp_path / "out" / "tiny.int.safetensors"
    loaded = IntegerModel(load(export.written))
    x, _ = next(iter(tiny_loader()))
    # the written file computes the fake-quantized model's logits exactly
    expected = model.model.eval()(x).double() * 2.0 ** (-loaded.output_exponent)
    assert torch.equal(loaded(loaded.quantize_input(x)).double(), expected)
    assert export.metrics["integer/val_acc"] == export.metrics["integer/simulation_val_acc"]
    assert export.metrics["integer/weight_bytes"] > 0
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    assert "integer/val_acc" in metrics.read_text().splitlines()[0]
    (table,) = tmp_path.glob("lightning_logs/version_*/integer_layers.csv")
    assert table.read_text().startswith("layer,weight_bits,input_bits,accumulator_bits")


def test_default_path_is_in_the_log_dir(tmp_path: Path) -> None:
    export = IntegerExport(evaluate=False)
    fit(tmp_path, INT_SE, export)
    assert export.written is not None and export.written.name == "model.int.safetensors"
    assert export.written.parent.parent.name == "lightning_logs"
    assert "integer/val_acc" not in export.metrics


def test_a_model_without_integer_form_fails_and_writes_nothing(tmp_path: Path) -> None:
    export = IntegerExport(path=str(tmp_path / "never.safetensors"))
    lsq = QuantPolicy(LayerConfig("lsq", weight_bits=4, act_bits=4))
    with pytest.raises(ExportError, match="power-of-two scales"):
        fit(tmp_path, lsq, export)
    assert not (tmp_path / "never.safetensors").exists()


def test_dyadic_scales_export_an_lsq_model_and_its_onnx(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    export = IntegerExport(
        path=str(tmp_path / "lsq.int.safetensors"),
        scales="dyadic",
        onnx_path=str(tmp_path / "lsq.onnx"),
    )
    model = fit(tmp_path, QuantPolicy(LayerConfig("lsq", weight_bits=4, act_bits=4)), export)
    loaded = IntegerModel(load(export.written))
    assert any(node.op == "requant_dyadic" for node in loaded.program.nodes)
    assert export.metrics["integer/check_top1_agreement"] == 1.0
    assert export.metrics["integer/val_acc"] == export.metrics["integer/simulation_val_acc"]
    x, _ = next(iter(tiny_loader()))
    simulation = lock_for_export(model.model)  # BN folded: the export's reference
    assert torch.equal(loaded.predict(x).argmax(1), simulation(x).argmax(1))
    codes = loaded.quantize_input(x)
    (got,) = onnxruntime.InferenceSession(str(tmp_path / "lsq.onnx")).run(
        None, {"input": codes.numpy()}
    )
    assert torch.equal(torch.from_numpy(got), loaded(codes))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"scales": "float"}, "scales='float' is not allowed; allowed: power_of_two, dyadic"),
        ({"min_top1_agreement": 1.5}, r"min_top1_agreement=1.5 is not allowed; allowed: \[0, 1\]"),
    ],
)
def test_bad_scales_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        IntegerExport(**kwargs)


class ValidatedNet(TinyNet):
    def validation_step(self, batch, batch_idx):
        pass


def test_empty_validation_data_is_a_clear_error(tmp_path: Path) -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0).long()))
    export = IntegerExport()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Quantize(INT_SE, "model"), export],
    )
    with pytest.raises(ExportError, match="needs validation data"):
        trainer.fit(ValidatedNet(), train_dataloaders=tiny_loader(), val_dataloaders=empty)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_check_batches_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(ValueError, match=f"check_batches={bad!r} is not allowed"):
        IntegerExport(check_batches=bad)
