"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A reader (or a resumed run) sees the old file or the whole new one, never a part of it; a
failed or interrupted write leaves no temporary file behind (a killed process may leave one
``.<name>.*.tmp``, never a truncated ``<name>``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; move it onto ``path`` when the block
    ends without an error, delete it otherwise.

    Example:
        >>> with atomic_path("out/model.bin") as tmp:  # doctest: +SKIP
        ...     tmp.write_bytes(payload)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:  # the bytes are on disk before the rename
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


__all__ = ["atomic_path", "write_atomic"]
