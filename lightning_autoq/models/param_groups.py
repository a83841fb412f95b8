"""Split a module's parameters into weight-decay and no-weight-decay optimizer groups."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NO_DECAY_MARKER = "_quant."
"""Parameters whose qualified name contains this (quantizer steps, ranges, bit-widths)."""

_NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def exempt_from_weight_decay(name: str, module: nn.Module, param_name: str) -> bool:
    """Whether a parameter should get no weight decay.

    Args:
        name: qualified name of the parameter (``"layer1.0.conv1.weight_quant.scale"``).
        module: the module that owns it directly.
        param_name: its name within ``module`` (``"scale"``).

    Returns:
        True for quantizer parameters (``"_quant."`` in ``name``), normalization-layer
        parameters (BatchNorm, GroupNorm, LayerNorm) and biases.
    """
    return NO_DECAY_MARKER in name or isinstance(module, _NORM_TYPES) or param_name == "bias"


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: decayed weights, then everything exempt with decay 0.

    Frozen parameters (``requires_grad=False``) are left out, shared ones counted once and
    empty groups dropped.

    Args:
        module: the model whose parameters to split.
        weight_decay: decay for the first group.

    Example:
        >>> groups = weight_decay_groups(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), 1e-4)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.0001), (3, 0.0)]
    """
    decay, no_decay, seen = [], [], set()
    for module_name, owner in module.named_modules():
        for param_name, param in owner.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            exempt = exempt_from_weight_decay(name, owner, param_name)
            (no_decay if exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
