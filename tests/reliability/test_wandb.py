"""W&B in offline mode (no network): the policy tables, plots and metrics of PrecisionLearning,
IncrementalQuantization and IntegerExport land in the run's files and history.

The history is read back from the offline run's ``.wandb`` file (LevelDB-style log of
``wandb.proto`` records), so the logged values are checked, not only the keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.callbacks.integer_export import REPORT_COLUMNS, IntegerExport
from lightning_autoq.callbacks.precision_learning import PrecisionLearning
from lightning_autoq.callbacks.quantize import Quantize
from tests.callbacks.tiny import TinyNet, tiny_loader
from tests.reliability.pipelines import PIPELINES, fit, make_trainer

BLOCK = 32768  # the .wandb file's block size; records never straddle a block header
HEADER = 7  # ":W&B", a 2-byte magic, a version byte; each record: crc32, length, type


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    chunks, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + HEADER + length > len(data):  # the writer is still on this record
            break
        body = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:  # full
            chunks.append(body)
        elif kind == 2:  # first
            pending = body
        elif kind == 3:  # middle
            pending += body
        else:  # last
            chunks.append(pending + body)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def finished_records(run: Path, timeout: float = 60.0) -> list[Any]:
    """The records of the offline run in folder ``run`` once its ``exit`` record is written
    (the W&B service writes the file after ``wandb.finish()`` returns)."""
    (path,) = run.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {path} after {timeout} s"
        time.sleep(0.2)


def history(run: Path) -> list[dict[str, Any]]:
    """Every history row (``wandb.log`` call) of the offline run in folder ``run``."""
    rows = []
    for record in finished_records(run):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def series(rows: list[dict[str, Any]], key: str) -> list[Any]:
    return [row[key] for row in rows if key in row]


def latest_table(run: Path, key: str) -> dict[str, Any]:
    """The last logged version of table ``key`` (file names carry the step)."""
    files = list(run.glob(f"files/media/table/{key}_*.table.json"))
    assert files, sorted(str(p.relative_to(run)) for p in run.rglob("*.json"))
    step = {f: int(f.name.removeprefix(Path(key).name + "_").split("_")[0]) for f in files}
    return json.loads(max(files, key=step.__getitem__).read_text())


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A WandbLogger writing an offline run under ``tmp_path``."""
    wandb.finish()  # WandbLogger would reuse a run another test left active
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = L.pytorch.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="t")
    yield logger
    wandb.finish()


def _run_folder(tmp_path: Path) -> Path:
    """The finished offline run's folder (its media and history fully written)."""
    wandb.finish()
    (run,) = tmp_path.glob("wandb/offline-run-*")
    finished_records(run)
    return run


def test_precision_learning_logs_bits_table_plot_and_size(tmp_path: Path, offline) -> None:
    logger = offline
    policy = QuantPolicy(LayerConfig("clip", weight_bits=6, act_bits=6), first_last_bits=None)
    qpl = PrecisionLearning(0, 2, weight_budget_bits=3.0, gamma=50.0, lr=0.2)
    L.seed_everything(0)
    trainer = make_trainer(tmp_path, 2, [Quantize(policy), qpl], logger=logger)
    trainer.fit(TinyNet(), tiny_loader())
    run = _run_folder(tmp_path)

    table = latest_table(run, "autoq/precision_bits")
    assert table["columns"] == ["epoch", "tensor", "bits", "model_bytes"]
    # Both learning epochs, three weight tensors each; the last rows are the learned bits.
    assert [(r[0], r[1]) for r in table["data"]] == [
        (e, t) for e in (0, 1) for t in ("model.0.w", "model.3.w", "model.6.w")
    ]
    assert {r[1]: r[2] for r in table["data"] if r[0] == 1} == qpl.current_bits()
    images = list(run.glob("files/media/images/autoq/precision_bits_*.png"))
    assert len(images) == 2  # one heatmap per learning epoch
    assert images[0].read_bytes()[:4] == b"\x89PNG"

    rows = history(run)
    sizes = series(rows, "autoq/model_size_bytes")
    assert len(sizes) == 2 and sizes[-1] == qpl.model_size_bytes()
    assert sizes[-1] <= 3.0 * (36 + 144 + 192) / 8  # within the 3-bit budget
    for key, bits in qpl.current_bits().items():
        assert series(rows, f"autoq/bits/{key}")[-1] == bits


def test_incremental_fraction_and_export_metrics_and_layer_table(tmp_path: Path, offline) -> None:
    logger = offline
    _, callbacks = fit(PIPELINES["ioiq_magnitude"], tmp_path, logger=logger)
    export = next(cb for cb in callbacks if isinstance(cb, IntegerExport))
    run = _run_folder(tmp_path)

    rows = history(run)
    # Epoch 0 trains fake-quantized (nothing frozen, nothing logged), then 50 / 75 / 100 %.
    assert series(rows, "autoq/quantized_fraction") == [0.5, 0.75, 1.0], rows
    for key in ("integer/val_acc", "integer/simulation_val_acc", "integer/weight_bytes"):
        assert series(rows, key) == [export.metrics[key]], key
    assert export.metrics["integer/weight_bytes"] > 0

    table = latest_table(run, "integer/layers")
    assert table["columns"] == REPORT_COLUMNS
    assert [r[0] for r in table["data"]] == ["0", "3", "6"]  # inside the exported "model"
    assert [r[1] for r in table["data"]] == [8, 4, 8]  # weight bits: first and last at 8
    layers = latest_table(run, "autoq/layers")  # Quantize's table is there too
    assert [r[0] for r in layers["data"]] == ["model.0", "model.3", "model.6"]
