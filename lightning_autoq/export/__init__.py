"""Export: batch-norm folding, the integer-only program, its file and the bit-exact check.

The integer-export names load lazily: :mod:`lightning_autoq.nn` imports the folding
formula from here, and the exporter imports :mod:`lightning_autoq.nn`.
"""

from typing import Any

from lightning_autoq.export.fold import find_bn_pairs, fold_batchnorm

_INTEGER_NAMES = (
    "ExactnessReport",
    "ExportError",
    "compare_with_simulation",
    "export_integer",
    "lock_for_export",
)


def __getattr__(name: str) -> Any:
    if name in _INTEGER_NAMES:
        from lightning_autoq.export import integer

        return getattr(integer, name)
    raise AttributeError(f"module 'lightning_autoq.export' has no attribute {name!r}")


__all__ = ["find_bn_pairs", "fold_batchnorm", *_INTEGER_NAMES]
