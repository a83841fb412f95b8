"""The exported file: packed weights, round trip, no pickle, rejected tampering."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_autoq.export import export_integer
from lightning_autoq.runtime import IntegerModel, load, packed_size_bytes, save
from lightning_autoq.runtime.format import METADATA_KEY, pack_codes, unpack_codes
from tests.export.models import quantized_resnet20


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_costs_bits_per_code(bits: int) -> None:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.randint(lo, hi + 1, (7, 5, 3))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, [7, 5, 3]).long(), codes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[IntegerModel, Path]:
    torch.manual_seed(0)
    model = export_integer(quantized_resnet20(2), torch.randn(4, 1, 28, 28))
    path = save(model.program, tmp_path_factory.mktemp("export") / "model.int.safetensors")
    return model, path


def test_save_load_round_trip_gives_identical_outputs(exported) -> None:
    model, path = exported
    loaded = IntegerModel(load(path))
    x = model.quantize_input(torch.randn(3, 1, 28, 28))
    assert torch.equal(loaded(x), model(x))
    assert loaded.output_exponent == model.output_exponent


def test_low_bit_weights_take_their_bits_on_disk(exported) -> None:
    model, path = exported
    sizes = packed_size_bytes(model.program)
    two_bit = [n for n, b in model.program.weight_bits.items() if b == 2]
    assert len(two_bit) >= 17  # every layer but the 8-bit first and last
    weights = sum(model.program.tensors[n].numel() for n in model.program.weight_bits)
    assert sizes["weights"] < weights  # well under a byte per weight
    overhead = path.stat().st_size - sizes["weights"] - sizes["other"]
    assert 0 < overhead < 64 * 1024  # the JSON graph and safetensors header


def test_loading_needs_neither_lightning_nor_pickle(exported) -> None:
    _, path = exported
    code = (
        "import sys, pickle\n"
        "pickle.loads = pickle.load = None\n"  # any use of pickle would fail
        "from lightning_autoq.runtime import IntegerModel, load\n"
        f"m = IntegerModel(load({str(path)!r}))\n"
        "import torch\n"
        "print(m(torch.zeros(1, 1, 28, 28, dtype=torch.int32)).shape)\n"
        "assert not any(k == 'lightning' or k.startswith(('lightning.', 'pytorch_lightning'))"
        " for k in sys.modules), 'lightning was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 10])" in result.stdout


def test_a_pickle_file_is_rejected(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (print, ("code from the file ran",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load(path)


def _rewrite(source: Path, target: Path, edit) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        graph = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    edit(graph, tensors)
    save_file(tensors, str(target), metadata={METADATA_KEY: json.dumps(graph)})
    return target


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g, t: g["nodes"][0].update(op="eval"), "unknown op 'eval'"),
        (lambda g, t: g["nodes"][1].update(inputs=["nowhere"]), "before it is defined"),
        (lambda g, t: g["nodes"][0].update(stride="__import__('os')"), "not integer data"),
        (lambda g, t: g.update(format_version=99), "format_version=99"),
        (lambda g, t: t.update({"x": torch.zeros(2)}), "integers only"),
        (lambda g, t: g["packed"]["conv1.weight"].update(shape=[10**6]), "packed weight holds"),
    ],
)
def test_a_tampered_graph_is_rejected(exported, tmp_path: Path, edit, message: str) -> None:
    _, path = exported
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ValueError, match=message):
        load(bad)


def test_a_failed_save_leaves_no_file(exported, tmp_path: Path, monkeypatch) -> None:
    model, _ = exported

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lightning_autoq.runtime.format.save_file", fail)
    target = tmp_path / "out.safetensors"
    with pytest.raises(OSError, match="disk full"):
        save(model.program, target)
    assert list(tmp_path.iterdir()) == []
