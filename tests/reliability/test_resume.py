"""Crash and resume: stop each pipeline at an epoch inside a stage, resume from that epoch's
checkpoint, and end with exactly the weights, decisions, policy files and export of an
uninterrupted run.

The uninterrupted run of each pipeline (module-scoped fixture) saves a checkpoint every
epoch; a crash after epoch ``k`` leaves ``epoch=k.ckpt`` as the last one, so the resumed run
starts from it. Data are not shuffled and every run is seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoq.runtime import IntegerModel, load
from tests.reliability.pipelines import EXPORT_FILE, PIPELINES, Snapshot, fit
from tests.reliability.test_ddp import differences

# Files a run writes into its folder whose bytes must match the uninterrupted run's.
ARTIFACTS = {
    "autoqnn": ["scheme_policy.yaml", "precision_policy.yaml"],
    "ioiq_magnitude": [EXPORT_FILE],
    "ioiq_random": [EXPORT_FILE],
    "qat": [],
}


def _checkpoints(root: Path) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=root / "checkpoints", filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each pipeline's folder, filled lazily: a full run with a checkpoint every epoch."""
    roots: dict[str, Path] = {}

    class Runs(dict):
        def __missing__(self, name: str) -> Path:
            root = tmp_path_factory.mktemp(name)
            extra = [Snapshot(root), _checkpoints(root)]
            fit(PIPELINES[name], root, extra=extra, enable_checkpointing=True)
            self[name] = root
            return root

    return Runs(roots)


def resume(name: str, straight: Path, epoch: int, root: Path) -> dict[str, Any]:
    ckpt = straight / "checkpoints" / f"epoch={epoch}.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (straight / "checkpoints").iterdir())
    fit(PIPELINES[name], root, extra=[Snapshot(root)], ckpt_path=ckpt)
    return torch.load(root / "rank0.pt")


def assert_same_run(name: str, straight: Path, resumed: Path, state: dict[str, Any]) -> None:
    expected = torch.load(straight / "rank0.pt")
    assert expected["state_dict"].keys() == state["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, state["state_dict"][key]), key
    skip = {"export_written"}  # the folders differ; the files are compared below
    diff = differences(
        {k: v for k, v in expected.items() if k not in skip},
        {k: v for k, v in state.items() if k not in skip},
    )
    assert not diff, diff
    for filename in ARTIFACTS[name]:
        assert (resumed / filename).read_bytes() == (straight / filename).read_bytes(), filename


# Epochs after which the run "crashes": inside the scheme search (0), inside precision
# learning (2), after the bits froze (3); inside the incremental schedule (1: 50 %,
# 2: 75 % frozen); mid-QAT (1).
CASES = [
    ("autoqnn", 0),
    ("autoqnn", 2),
    ("autoqnn", 3),
    ("ioiq_magnitude", 1),
    ("ioiq_magnitude", 2),
    ("ioiq_random", 1),
    ("qat", 1),
]


@pytest.mark.parametrize(("name", "epoch"), CASES)
def test_resume_matches_the_uninterrupted_run(
    uninterrupted: dict[str, Path], tmp_path: Path, name: str, epoch: int
) -> None:
    straight = uninterrupted[name]
    state = resume(name, straight, epoch, tmp_path)
    assert_same_run(name, straight, tmp_path, state)


def test_the_checkpoints_are_taken_mid_stage(uninterrupted: dict[str, Path]) -> None:
    """The resume cases really start inside each stage (the comparison is not trivial)."""
    sd = torch.load(uninterrupted["autoqnn"] / "checkpoints" / "epoch=0.ckpt")["state_dict"]
    assert all(int(v) == -1 for k, v in sd.items() if k.endswith(".chosen"))  # unfixed
    sd = torch.load(uninterrupted["autoqnn"] / "checkpoints" / "epoch=2.ckpt")["state_dict"]
    assert all(int(v) >= 0 for k, v in sd.items() if k.endswith(".chosen"))
    assert not any(bool(v) for k, v in sd.items() if k.endswith(".frozen"))  # not yet frozen
    root = uninterrupted["ioiq_magnitude"]
    for epoch, fraction in ((1, 0.5), (2, 0.75)):
        sd = torch.load(root / "checkpoints" / f"epoch={epoch}.ckpt")["state_dict"]
        mask = sd["model.3.weight_quant.mask"]
        assert abs(mask.float().mean().item() - fraction) < 0.01
    model = IntegerModel(load(root / EXPORT_FILE))  # the final export loads
    assert model.output_exponent is not None
