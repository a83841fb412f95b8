"""benchmarks/precision_learning.py: arguments and policies (the runs are too long here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "precision_learning.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_precision_learning", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_is_two_epochs_on_a_subset() -> None:
    args = _bench().parse(["--quick", "--device", "cpu"])
    assert (args.epochs, args.qpl_epochs) == (2, 1)
    assert args.train_subset == 1000 and args.device == "cpu"
    assert args.budgets == [3.0, 2.5]
    assert _bench().parse(["--device", "cuda", "--epochs", "30"]).epochs == 30
    with pytest.raises(SystemExit):
        _bench().parse(["--epochs", "2", "--qpl-epochs", "3"])
    with pytest.raises(SystemExit):
        _bench().parse(["--budgets", "-1"])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_uniform_policies_are_valid(bits: int) -> None:
    configs = _bench().policy("clip", bits, 4).resolve(["first", "middle", "last"])
    assert configs["middle"].weight_bits == bits and configs["first"].weight_bits == 8
