"""QAG: turn any float model into a quantized one by swapping layers (AutoQNN §QAG).

Every ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``Linear`` (exact types; a subclass may
bypass ``forward``, e.g. the output projection inside ``nn.MultiheadAttention``) is replaced
in place by its quantized twin from :mod:`lightning_autoq.nn`, which keeps the parameter
tensors and names. No per-model code: the policy names layers by their qualified names.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from lightning_autoq.convert.policy import LayerConfig, QuantPolicy
from lightning_autoq.nn import QUANT_LAYERS, QuantLayer
from lightning_autoq.quant.finite import check_finite


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every float or already-quantized layer, in registration order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m) in QUANT_LAYERS or isinstance(m, QuantLayer)
    ]


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """``(name, layer)`` of every quantized layer, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def convert(
    model: nn.Module, policy: QuantPolicy | None = None, *, inplace: bool = True
) -> nn.Module:
    """Quantize ``model`` according to ``policy`` (default: :class:`QuantPolicy`'s defaults).

    Idempotent: a layer already quantized with the same configuration is left as it is (its
    quantizer state kept); one quantized with a different configuration is rebuilt from its
    float parameters; a layer the policy excludes is turned back into float.

    Args:
        model: any ``nn.Module``.
        policy: per-layer choices; every override must match a layer.
        inplace: modify ``model`` (True) or a deep copy of it.

    Returns:
        The quantized model.

    Raises:
        ValueError: the model has no quantizable layer, the policy does not fit it, or a
            parameter or buffer holds NaN/Inf (``NonFiniteError``, naming it).

    Example:
        >>> net = convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2)))
        >>> type(net[0]).__name__
        'QuantConv2d'
    """
    policy = policy if policy is not None else QuantPolicy()
    if not inplace:
        model = copy.deepcopy(model)
    layers = quantizable_layers(model)
    if not layers:
        supported = ", ".join(sorted(cls.__name__ for cls in QUANT_LAYERS))
        raise ValueError(
            f"{type(model).__name__} has no quantizable layer (exact types: {supported})"
        )
    _warn_unconverted(model)
    configs = policy.resolve([name for name, _ in layers])
    check_finite_state(model)
    for name, module in layers:
        config = configs[name]
        if isinstance(module, QuantLayer):
            if config == module.config:
                continue
            module = module.to_float()
            if config is None:
                _set_submodule(model, name, module)
                continue
        if config is None:
            continue
        _set_submodule(model, name, QUANT_LAYERS[type(module)].from_float(module, config))
    for name, layer in quantized_layers(model):
        layer.__dict__["_autoq_name"] = name  # named in error messages (not state)
    return model


def check_finite_state(model: nn.Module) -> None:
    """Raise :class:`~lightning_autoq.quant.finite.NonFiniteError` naming the first parameter
    or floating buffer of ``model`` that holds NaN/Inf (once, at conversion: no per-step cost).
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() and tensor.device.type != "meta":
            kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
            check_finite(
                tensor.detach(),
                f"{kind} {name!r}",
                "a diverged or corrupt checkpoint? load finite weights before quantizing",
            )


def _warn_unconverted(model: nn.Module) -> None:
    """Name the weight-bearing modules that stay float, so nothing is skipped silently."""
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    inside_attention = tuple(f"{n}." for n in attention)
    skipped = [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, tuple(QUANT_LAYERS))
        and type(m) not in QUANT_LAYERS
        and not isinstance(m, QuantLayer)
        and not name.startswith(inside_attention)
    ]
    if attention:
        skipped.insert(
            0,
            f"{len(attention)} nn.MultiheadAttention ({', '.join(attention[:3])}"
            + (", ...)" if len(attention) > 3 else ")"),
        )
    if skipped:
        shown = "; ".join(skipped[:6]) + (
            f"; ... ({len(skipped)} in all)" if len(skipped) > 6 else ""
        )
        warnings.warn(f"left in float (not a supported exact layer type): {shown}", stacklevel=3)


def restore_float(model: nn.Module) -> nn.Module:
    """Undo :func:`convert` in place: every quantized layer back to its float layer."""
    for name, layer in quantized_layers(model):
        _set_submodule(model, name, layer.to_float())
    return model


def layer_configs(model: nn.Module) -> dict[str, LayerConfig | None]:
    """The configuration of every quantizable layer: None for the ones left in float.

    ``QuantPolicy.explicit(layer_configs(model))`` is a policy that rebuilds ``model``.
    """
    return {
        name: module.config if isinstance(module, QuantLayer) else None
        for name, module in quantizable_layers(model)
    }
