"""Batch-norm folding (Jacob et al. 2018, https://arxiv.org/abs/1712.05877, section 3.2).

``BN(conv(x) + b) = conv'(x) + b'`` with ``w' = w gamma / sqrt(var + eps)`` (per output
channel) and ``b' = beta + gamma (b - mean) / sqrt(var + eps)``. :func:`fold_batchnorm` is
the differentiable formula (gamma and beta keep training through it); :func:`find_bn_pairs`
finds the quantized conv/linear -> BatchNorm pairs of a model with ``torch.fx``.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm


def fold_batchnorm(
    weight: Tensor, bias: Tensor | None, bn: _BatchNorm, channel_axis: int = 0
) -> tuple[Tensor, Tensor]:
    """The folded weight and bias of a layer followed by ``bn`` (BN in eval form).

    Args:
        weight: the layer's weight, output channels on ``channel_axis``.
        bias: the layer's bias, or None.
        bn: the batch norm after the layer; its running statistics are used.
        channel_axis: output-channel axis of ``weight``.

    Returns:
        ``(w', b')``, differentiable with respect to weight, bias, gamma and beta.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    shape = [1] * weight.dim()
    shape[channel_axis] = -1
    folded_weight = weight * factor.reshape(shape)
    centered = -bn.running_mean if bias is None else bias - bn.running_mean
    return folded_weight, beta + factor * centered


class _LeafTracer(fx.Tracer):
    """Treats quantized layers as leaves (their forward has data-dependent state)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from lightning_autoq.nn import QuantLayer

        return isinstance(m, QuantLayer) or super().is_leaf_module(m, module_qualified_name)


def find_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, bn name)`` for every BatchNorm fed only by one quantized conv/linear.

    A pair needs: the BN's input is the output of a quantized ``Conv1d/2d/3d`` or ``Linear``
    whose output has no other user, each module is called once, and the channel counts
    agree. Transposed convolutions are not paired.

    Raises:
        ValueError: ``model`` cannot be traced by ``torch.fx.symbolic_trace``.
    """
    from lightning_autoq.nn import QuantLayer

    try:
        graph = _LeafTracer().trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise ValueError(
            f"cannot trace {type(model).__name__} with torch.fx to find conv -> BatchNorm pairs "
            f"({type(err).__name__}: {err}); exclude it (module_name= a traceable submodule) "
            "or restructure its forward without data-dependent control flow"
        ) from err
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, _BatchNorm) or bn.running_var is None or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or calls[src.target] != 1:
            continue
        layer = model.get_submodule(src.target)
        if not isinstance(layer, QuantLayer) or layer.channel_axis != 0:
            continue
        if len(src.users) != 1 or layer.weight.shape[0] != bn.num_features:  # type: ignore[attr-defined]
            continue
        pairs.append((str(src.target), str(node.target)))
    return pairs


__all__ = ["find_bn_pairs", "fold_batchnorm"]
