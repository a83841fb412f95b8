"""Argument helpers shared by the callbacks: the module they act on, epoch numbers."""

from __future__ import annotations

import lightning as L
from torch import nn


def target_module(pl_module: L.LightningModule, module_name: str | None) -> nn.Module:
    """The submodule ``module_name`` of ``pl_module`` (itself for None); a clear error else."""
    if module_name is None:
        return pl_module
    try:
        return pl_module.get_submodule(module_name)
    except AttributeError:
        children = ", ".join(n for n, _ in pl_module.named_children())
        raise ValueError(
            f"module_name={module_name!r} is not a submodule; children: {children}"
        ) from None


def check_epoch(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an integer epoch >= ``minimum``; an error naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= {minimum}")
    return value
