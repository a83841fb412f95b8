"""Counting correct classifications over a loader (the integer model or any other)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def count_correct(predict: Callable[[Tensor], Tensor], loader: Iterable[Any]) -> tuple[int, int]:
    """``(correct, total)`` of ``predict(x).argmax(1) == y`` over ``(x, y)`` batches.

    Raises:
        ValueError: the loader gave no sample (an accuracy of 0 / 0 is no accuracy).
    """
    correct = total = 0
    for x, y in loader:
        correct += int((predict(x).argmax(1).cpu() == y.cpu()).sum())
        total += int(y.numel())
    if total == 0:
        raise ValueError("the evaluation loader gave 0 samples; allowed: at least one sample")
    return correct, total


__all__ = ["count_correct"]
