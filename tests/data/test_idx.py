"""IDX reader and writer."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from lightning_autoq.data import IDXFormatError, read_idx, write_idx


def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">HBB{len(shape)}I", 0, type_code, len(shape), *shape) + payload


@pytest.mark.parametrize("gz", [False, True])
def test_read_hand_written_uint8(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(0x08, (2, 3), bytes(range(6)))
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.arange(6, dtype=torch.uint8).view(2, 3))


def test_read_big_endian_int32(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(0x0C, (3,), struct.pack(">3i", 1, -2, 70000)))
    assert torch.equal(read_idx(path), torch.tensor([1, -2, 70000], dtype=torch.int32))


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8),
        torch.randint(0, 10, (7,), dtype=torch.uint8),
        torch.randint(-100, 100, (2, 3, 4), dtype=torch.int16),
        torch.randn(4, 2, dtype=torch.float64),
        torch.randn(3, dtype=torch.float32),
    ],
)
@pytest.mark.parametrize("name", ["t", "t.gz"])
def test_write_read_round_trip(tmp_path: Path, tensor: torch.Tensor, name: str) -> None:
    path = tmp_path / name
    write_idx(path, tensor)
    assert path.read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path)
    assert out.dtype == tensor.dtype and torch.equal(out, tensor)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x08\x03\x00\x00" + bytes(8), "magic number 0x08030000"),
        (b"\x00\x00\x07\x01" + bytes(8), "IDX type 0x07"),
        (b"\x00\x00\x08\x03\x00\x00", "dimension sizes"),
        (idx_bytes(0x08, (2, 3), bytes(5)), "holds 5 data bytes"),
        (idx_bytes(0x08, (2, 3), bytes(7)), "holds 7 data bytes"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
)
def test_malformed_files_raise(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(IDXFormatError, match=message):
        read_idx(path)


def test_missing_file_and_bad_dtype(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"torch\.int64 cannot be stored as IDX"):
        write_idx(tmp_path / "x", torch.zeros(3, dtype=torch.int64))
