"""Read and write IDX files, the format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian
int32 dimension sizes, then the data in row-major, big-endian order. Files may be gzipped.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from lightning_autoq.runtime.atomic import write_atomic

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code -> element type as stored (big-endian)."""

_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise IDXFormatError(f"{str(path)!r} is a corrupt gzip file: {err}") from err


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file, plain or gzipped (detected from its content, not its name).

    Args:
        path: the file.

    Returns:
        A tensor of the stored shape and type: ``torch.uint8`` for images and labels of
        (Fashion-)MNIST; int8, int16, int32, float32 or float64 for the other IDX types.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IDXFormatError: bad magic number, unknown type code, or a size that does not match
            the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{str(path)!r} is too short ({len(data)} bytes) for an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IDXFormatError(
            f"{str(path)!r} has magic number 0x{data[:4].hex()}, expected 0x0000<type><ndim>"
        )
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_TYPES)
        raise IDXFormatError(
            f"{str(path)!r} has IDX type 0x{type_code:02X}, expected one of {known}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{str(path)!r} is too short for its {ndim} dimension sizes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFormatError(
            f"{str(path)!r} holds {len(data) - header} data bytes, header {shape} of "
            f"{dtype.name} needs {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, tensor: torch.Tensor, compress: bool | None = None) -> None:
    """Write ``tensor`` as an IDX file.

    Args:
        path: destination; gzipped when ``compress`` is True, or when it is None and the
            name ends with ``.gz``.
        tensor: uint8, int8, int16, int32, float32 or float64 data of at least one dimension.
        compress: force gzip on or off.

    Raises:
        ValueError: ``tensor`` has an unsupported dtype or no dimensions.
    """
    path = Path(path)
    array = tensor.detach().cpu().numpy()
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    if array.dtype not in codes:
        allowed = ", ".join(sorted(str(d) for d in codes))
        raise ValueError(f"tensor dtype {tensor.dtype} cannot be stored as IDX; allowed: {allowed}")
    if array.ndim == 0:
        raise ValueError("tensor must have at least one dimension to be stored as IDX")
    code = codes[array.dtype]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    write_atomic(path, gzip.compress(payload) if compress else payload)
