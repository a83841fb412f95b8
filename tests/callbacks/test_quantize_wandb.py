"""The Quantize callback with Weights & Biases in offline mode (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import wandb

from lightning_autoq.callbacks import Quantize
from tests.callbacks.tiny import POLICY, TinyNet, tiny_loader


def test_layer_table_lands_in_offline_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb.finish()  # WandbLogger would reuse a run another test left active
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = L.pytorch.loggers.WandbLogger(
        save_dir=str(tmp_path), offline=True, project="autoq-test"
    )
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[Quantize(POLICY)],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(TinyNet(), tiny_loader())
    wandb.finish()
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/autoq/layers_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["layer", "type", "scheme"]
    assert [row[0] for row in table["data"]] == ["model.0", "model.3", "model.6"]
