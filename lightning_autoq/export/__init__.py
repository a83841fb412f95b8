"""Export helpers: batch-norm pairing and folding (the integer export builds on them)."""

from lightning_autoq.export.fold import find_bn_pairs, fold_batchnorm

__all__ = ["find_bn_pairs", "fold_batchnorm"]
