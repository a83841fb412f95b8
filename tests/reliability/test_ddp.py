"""Every callback under DDP (2 CPU processes, gloo): each rank ends with the same decisions.

Three pipelines cover the nine callbacks (see ``pipelines.py``); a ``Snapshot`` callback saves
each rank's final state. Parameters, masks, frozen flags, thetas, bits and policies must be
identical; only running statistics that every training forward updates from its own batch
(DDP broadcasts rank 0's at the next forward) may differ, and for the QAT pipeline not even
those (OscillationFreezing re-estimates and averages the batch-norm statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_autoq.callbacks.integer_export import REPORT_COLUMNS
from lightning_autoq.runtime import IntegerModel, load
from tests.callbacks.tiny import tiny_loader
from tests.reliability.pipelines import EXPORT_FILE, PIPELINES, Snapshot, fit

DDP = {"devices": 2, "strategy": "ddp_spawn"}  # each run spawns 2 processes: ~20 s on 2 cores


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two nested states differ (tensors with torch.equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if torch.equal(a, b) else [path]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def run_ddp(name: str, root: Path, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    fit(PIPELINES[name], root, extra=[Snapshot(root)], **DDP, **kwargs)
    return torch.load(root / "rank0.pt"), torch.load(root / "rank1.pt")


def assert_ranks_agree(r0: dict[str, Any], r1: dict[str, Any], per_batch: tuple[str, ...] = ()):
    """Everything equal but the running statistics and the named per-batch values."""
    running = set(r0["running"])
    diff = differences(
        {k: v for k, v in r0.items() if k not in per_batch},
        {k: v for k, v in r1.items() if k not in per_batch},
    )
    unexplained = [d for d in diff if d.removeprefix("/state_dict/") not in running]
    assert not unexplained, unexplained
    params = [k for k in r0["state_dict"] if k not in running]
    assert len(params) > 10  # the comparison covered the model, not an empty dict
    return diff


@pytest.mark.slow
def test_autoqnn_search_then_precision_learning(tmp_path: Path) -> None:
    r0, r1 = run_ddp("autoqnn", tmp_path)
    assert_ranks_agree(r0, r1)
    # The search ran and was fixed on the same schemes; theta moved away from zero.
    assert len(r0["schemes"]) == 6 and r0["schemes"] == r1["schemes"]
    assert all(t.abs().sum() > 0 for t in r0["thetas"])
    chosen = [k for k in r0["state_dict"] if k.endswith(".chosen")]
    assert chosen and all(int(r0["state_dict"][k]) >= 0 for k in chosen)
    # The bits were learned and frozen within the 3-bit average budget (from 6 bits).
    assert r0["bits_frozen"] and r0["bits"] == r1["bits"]
    assert all(b <= 3 for b in r0["bits"].values()), r0["bits"]
    assert r0["bits_policy"] == r1["bits_policy"] == r0["policy"]
    # Each policy file written once, by rank 0, in the run folder.
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == [
        "precision_policy.yaml",
        "scheme_policy.yaml",
    ]


@pytest.mark.parametrize("strategy", ["magnitude", pytest.param("random", marks=pytest.mark.slow)])
def test_ioiq_lock_incremental_export(tmp_path: Path, strategy: str) -> None:
    r0, r1 = run_ddp(f"ioiq_{strategy}", tmp_path, logger=CSVLogger(tmp_path / "logs"))
    diff = assert_ranks_agree(r0, r1)
    assert all("act_quant" in d for d in diff)  # BN locked: only input ranges may differ
    sd = r0["state_dict"]
    masks = [k for k in sd if k.endswith("weight_quant.mask")]
    assert len(masks) == 3 and all(bool(sd[k].all()) for k in masks)  # grown to 100 %
    assert bool(sd["model.0.bn_locked"])
    # The export: written once by rank 0, known to both ranks, loadable, and it computes
    # the accuracy both ranks report (counted over both ranks' halves of the data).
    assert r0["export_written"] == r1["export_written"] == str(tmp_path / EXPORT_FILE)
    assert [p.name for p in tmp_path.glob("*.safetensors")] == [EXPORT_FILE]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    model = IntegerModel(load(tmp_path / EXPORT_FILE))
    correct = total = 0
    for x, y in tiny_loader():
        correct += int((model.predict(x).argmax(1) == y).sum())
        total += len(y)
    assert r0["export_metrics"] == r1["export_metrics"]
    # The layer table and the metrics are logged once, by rank 0.
    tables = list((tmp_path / "logs").rglob("integer_layers.csv"))
    assert len(tables) == 1, tables
    assert tables[0].read_text().startswith(",".join(REPORT_COLUMNS))
    assert r0["export_metrics"]["integer/val_acc"] == correct / total


def test_qat_dampening_freezing_distillation(tmp_path: Path) -> None:
    r0, r1 = run_ddp("qat", tmp_path)
    # The distillation loss is of each rank's own batch; nothing else may differ, not even
    # the batch-norm statistics (re-estimated, then averaged) or LSQ's learned input steps.
    assert assert_ranks_agree(r0, r1, per_batch=("kd_loss",)) == []
    assert r0["dampening_loss"] > 0 and r0["kd_loss"] > 0 and r1["kd_loss"] > 0
    frozen = sum(int(f.sum()) for f in r0["frozen"].values())
    assert frozen > 0  # some weights oscillated and were frozen, on both ranks alike
    # One float teacher on both ranks (compared above), not trained along with the student.
    assert not torch.equal(r0["teacher"]["model.0.weight"], r0["state_dict"]["model.0.weight"])
