"""benchmarks/scheme_search.py: arguments and policies (the runs themselves are too long here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lightning_autoq import AUTOQNN_SCHEMES

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "scheme_search.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scheme_search", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_is_one_epoch_on_a_subset() -> None:
    args = _bench().parse(["--quick"])
    assert (args.epochs, args.search_epochs) == (1, 1)
    assert args.train_subset == 2000 and args.search_size == 500
    with pytest.raises(SystemExit):
        _bench().parse(["--epochs", "2", "--search-epochs", "3"])


@pytest.mark.parametrize("bits", [2, 3])
def test_every_single_scheme_policy_is_valid(bits: int) -> None:
    bench = _bench()
    for scheme in AUTOQNN_SCHEMES:
        configs = bench.single_policy(scheme, bits).resolve(["first", "middle", "last"])
        assert {c.scheme for c in configs.values()} == {scheme}
