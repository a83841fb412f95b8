"""Helpers shared by the callbacks: the module they act on, epoch numbers, their outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_autoq.convert.policy import QuantPolicy, check_keys_match, check_layer_keys
from lightning_autoq.utils.checks import check_count


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
    return check_count(name, value, minimum)


def check_layer_patterns(what: str, keys: object, layer_names: Sequence[str]) -> list[str]:
    """``keys`` (layer names or ``re:`` patterns) as a list, each matching a layer.

    Raises:
        ValueError: ``keys`` is a bare string or not a list of strings, or one key matches
            none of ``layer_names`` (the message names it and lists the layers).
    """
    checked = check_layer_keys(what, keys)
    check_keys_match(f"{what} entry", checked, layer_names)
    return checked


def run_folder(trainer: L.Trainer) -> Path:
    """The logger's folder, else ``default_root_dir``; a collective call under DDP."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def save_policy(trainer: L.Trainer, policy: QuantPolicy, filename: str, what: str) -> Path:
    """Write ``policy`` to ``<run folder>/<filename>`` on rank 0; the path on every rank.

    ``what`` starts the log line, e.g. ``"SchemeSearch: fixed policy"``.
    """
    path = run_folder(trainer) / filename  # on every rank: Trainer.log_dir broadcasts
    if trainer.is_global_zero:
        policy.save(path)
        rank_zero_info(f"{what} written to {path}")
    return path
