"""benchmarks/qat_methods.py: policies of every method, and the --quick path on tiny data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lightning_autoq.data.fashion_mnist import search_dirs

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "qat_methods.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_qat_methods", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_every_method_policy_is_valid(bits: int) -> None:
    bench = _bench()
    for method in bench.METHODS:
        configs = bench.policy(method, bits).resolve(["conv1", "layer1.0.conv1", "fc"])
        inner = configs["layer1.0.conv1"]
        assert (inner.weight_bits, inner.act_bits) == (bits, bits)
        assert configs["conv1"].scheme == "lsq" and configs["fc"].weight_bits == 8


def test_bad_bits_and_quick_defaults() -> None:
    bench = _bench()
    args = bench.parse(["--quick"])
    assert (args.epochs, args.fp_epochs, args.train_subset) == (1, 1, 1000)
    with pytest.raises(SystemExit):
        bench.parse(["--bits", "8"])


def _has_fashion_mnist() -> bool:
    return any((d / "train-images-idx3-ubyte.gz").exists() for d in search_dirs(None))


@pytest.mark.skipif(not _has_fashion_mnist(), reason="no local Fashion-MNIST copy")
def test_quick_run_on_tiny_data(tmp_path: Path) -> None:
    out = tmp_path / "qat.json"
    methods = ["pact", "freezing", "distillation"]
    report = _bench().main(
        [
            "--quick",
            "--train-subset", "64",
            "--test-subset", "32",
            "--batch-size", "16",
            "--width", "4",
            "--bits", "2",
            "--device", "cpu",
            "--methods", *methods,
            "--out", str(out),
            "--out-dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["results"] == report["results"]
    row = saved["results"]["w2a2"]
    assert set(row) == set(methods)
    for entry in row.values():
        assert 0.0 <= entry["test_acc"] <= 1.0
        assert entry["step_x_float"] > 0
