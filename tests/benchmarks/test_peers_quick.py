"""benchmarks/peers.py: the --quick path on tiny fake data for the contenders installed here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lightning_autoq import LayerConfig, QuantPolicy
from lightning_autoq.data.in_memory import InMemoryImageDataModule

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_peers", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyImages(InMemoryImageDataModule):
    """96 train / 32 test 16x16 grey images; the label is the brightest quadrant x 2 + noise bit."""

    num_classes = 10
    in_channels = 1
    image_size = 16
    mean = (0.5,)
    std = (0.25,)
    padding = 2

    def load(self):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 120, (128, 1, 16, 16), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (128,), generator=g)
        for i, label in enumerate(labels.tolist()):  # a learnable signal: a bright row per class
            images[i, 0, label] = 250
        return images[:96], labels[:96], images[96:], labels[96:]


def _tiny(args):
    return TinyImages(batch_size=16, val_size=0, augment=False, seed=args.seed)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_arguments() -> None:
    bench = _bench()
    args = bench.parse(["--quick"])
    assert (args.epochs, args.fp_epochs, args.width, args.train_subset) == (1, 1, 8, 1000)
    assert bench.parse([]).width == 16
    for bad in (["--bits", "8"], ["--contenders", "qkeras"], ["--policy-yaml", "missing.yaml"]):
        with pytest.raises(SystemExit):
            bench.parse(bad)


def test_policy_saved_from_lightning_module_is_rekeyed(tmp_path: Path) -> None:
    bench = _bench()
    names = ["conv1", "layer1.0.conv1", "fc"]
    policy = QuantPolicy(LayerConfig("lsq", 3, 3), overrides={"model.fc": {"weight_bits": 8}})
    stripped = bench.strip_prefix(policy, names)
    assert stripped.resolve(names)["fc"].weight_bits == 8
    with pytest.raises(ValueError, match="matches no quantizable layer"):
        bench.strip_prefix(QuantPolicy(overrides={"model.nope": {"weight_bits": 8}}), names)


def _run(bench, contenders: list[str], policy: Path, out: Path, tmp_path: Path) -> dict:
    return bench.main(
        [
            "--quick",
            "--width", "4",
            "--bits", "2",
            "--steps", "2",
            "--warmup-steps", "1",
            "--threads", "1",
            "--device", "cpu",
            "--contenders", *contenders,
            "--policy-yaml", f"qpl={policy}",
            "--out", str(out),
            "--out-dir", str(tmp_path / "runs"),
        ],
        make_datamodule=_tiny,
    )  # fmt: skip


def test_quick_run_on_tiny_data(tmp_path: Path) -> None:
    bench = _bench()
    contenders = ["autoq_lsq", "autoq_int_se"]
    contenders += [
        c for c, m in (("brevitas", "brevitas"), ("torch_ao", "torch.ao")) if _importable(m)
    ]
    if _importable("torchao"):
        contenders.append("torchao")
    policy = tmp_path / "qpl.yaml"  # keyed like the files SchemeSearch/PrecisionLearning write
    QuantPolicy(
        LayerConfig("lsq", 3, 4), overrides={"model.layer3.2.conv2": {"weight_bits": 2}}
    ).save(policy)
    out = tmp_path / "peers.json"
    threads = torch.get_num_threads()
    try:
        report = _run(bench, contenders, policy, out, tmp_path)
    finally:
        torch.set_num_threads(threads)

    saved = json.loads(out.read_text())
    assert saved["results"] == report["results"]
    assert out.with_suffix(".png").stat().st_size > 0
    assert saved["edge_layers"] == ["conv1", "fc"]
    row = saved["results"]["w2a2"]
    assert list(row) == contenders
    for name in ("autoq_lsq", "autoq_int_se", "brevitas", "torch_ao"):
        if name not in row:
            continue
        r = row[name]
        assert r["status"] == "ok", r
        assert 0.0 <= r["test_acc"] <= 1.0 and r["step_x_float"] > 0
        assert r["packed_weight_bytes_theoretical"] > 0
    lsq, int_se = row["autoq_lsq"], row["autoq_int_se"]
    assert lsq["layers"]["conv1"]["weight_bits"] == 8 and lsq["layers"]["fc"]["input_bits"] == 8
    assert lsq["layers"]["layer2.0.conv1"] == {
        "scheme": "lsq", "weight_bits": 2, "input_scheme": "lsq", "input_bits": 2
    }  # fmt: skip
    # LSQ's float steps export with dyadic requantization, checked by top-1 agreement
    assert lsq["integer_only"] and lsq["export"]["requant"] == "dyadic"
    assert 0.99 <= lsq["export"]["top1_agreement"] <= 1.0
    assert (tmp_path / "runs" / "lsq_w2a2.int.safetensors").is_file()
    export = int_se["export"]
    assert int_se["integer_only"] and export["bit_exact"] and export["mismatched_outputs"] == 0
    assert export["requant"] == "shift" and export["top1_agreement"] == 1.0
    assert export["bytes"] > export["packed_weight_bytes"] > 0
    assert (tmp_path / "runs" / "int_se_w2a2.int.safetensors").stat().st_size == export["bytes"]
    if "brevitas" in row:
        layers = row["brevitas"]["layers"]
        assert layers["conv1"]["weight_bits"] == 8 and layers["layer1.0.conv1"]["input_bits"] == 2
        assert layers["layer1.0.conv1"]["weight_codes"][1] <= 1  # 2-bit narrow range
        assert row["brevitas"]["export"]["bytes"] > 0 and not row["brevitas"]["integer_only"]
    if "torch_ao" in row:
        ao = row["torch_ao"]
        assert ao["layers"]["weights"]["layer1.0.conv1"]["weight_bits"] == 2
        assert ao["layers"]["weights"]["conv1"]["weight_bits"] == 8
        codes = ao["export"]["weight_codes"]["layer1.0.conv1"]
        (lo, hi), (qlo, qhi) = codes["codes"], codes["qat_range"]
        assert codes["dtype"] == "torch.qint8" and (qlo, qhi) == (-2, 1)
        assert codes["within_qat_range"] == (qlo <= lo and hi <= qhi)
        outside = ao["export"]["layers_outside_qat_range"]
        assert ("layer1.0.conv1" in outside) != codes["within_qat_range"]
        assert 0.0 <= ao["export"]["converted_test_acc"] <= 1.0
    if "torchao" in row:
        assert row["torchao"]["status"] == "not_applicable"
        assert row["torchao"]["fake_quantized_layers"] == ["fc"]
    qpl = saved["policy_files"]["qpl"]
    assert qpl["status"] == "ok" and qpl["layers"]["layer3.2.conv2"]["weight_bits"] == 2
    assert qpl["layers"]["layer1.0.conv1"]["input_bits"] == 4
