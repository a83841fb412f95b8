"""Load a network's weights from a Lightning checkpoint or a plain ``state_dict`` file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn


def extract_state_dict(
    checkpoint: Mapping[str, object], prefix: str = "model."
) -> dict[str, Tensor]:
    """The entries of ``checkpoint`` that belong to the network under ``prefix``.

    Args:
        checkpoint: a Lightning checkpoint (a dict with a ``"state_dict"`` entry, whose keys
            under ``prefix`` are taken) or a plain ``state_dict``: the network's own, or a
            LightningModule's (every key under ``prefix``).
        prefix: attribute path of the network in the LightningModule, with a trailing dot.

    Returns:
        The network's ``state_dict`` with ``prefix`` removed from the keys.
    """
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"checkpoint 'state_dict' is a {type(state).__name__}, not a dict")
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if checkpoint and all(key.startswith(prefix) for key in checkpoint):
        return {k[len(prefix) :]: v for k, v in checkpoint.items()}
    return dict(checkpoint)  # type: ignore[arg-type]


def _summarize(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_model_weights(model: nn.Module, path: str | Path, prefix: str = "model.") -> None:
    """Load the weights saved in ``path`` into ``model``, strictly.

    The file is read with ``torch.load(..., weights_only=True)``, so it must hold only
    tensors and plain Python containers (Lightning checkpoints do).

    Args:
        model: the network to fill in place.
        path: a Lightning ``.ckpt`` or a file written by ``torch.save(model.state_dict())``.
        prefix: see :func:`extract_state_dict`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file's keys or shapes do not match ``model`` (the message lists the
            missing and unexpected keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict"
        )
    state = extract_state_dict(checkpoint, prefix)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the model: "
            f"missing keys [{_summarize(missing)}]; unexpected keys [{_summarize(unexpected)}]"
        )
    mismatched = [
        f"{k}: {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint {str(path)!r} has shapes that do not match the model: "
            f"[{_summarize(mismatched)}]"
        )
    model.load_state_dict(state, strict=True)
