"""Incremental (INQ-style) weight quantization: a growing mask of frozen quantized entries.

:class:`IncrementalWeight` wraps a layer's weight :class:`~lightning_autoq.quant.Quantizer`
and keeps the call signature (tensor -> tensor). Once the schedule has started, the
effective weight is ``mask * frozen + (1 - mask) * W``: the masked entries are the quantized
values captured when they were masked (on one fixed grid for the whole layer), the others
stay in float, as in INQ (Zhou et al. 2017, https://arxiv.org/abs/1702.03044) and IOIQ's
``W = M Q(W) + (1 - M) W``. The gradient reaches ``W`` only through the float part, and
because the frozen values live in a buffer, weight decay and momentum cannot move them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_autoq.quant.quantizer import Quantizer
from lightning_autoq.quant.schemes import Params, Scheme

MaskStrategy = Literal["random", "magnitude"]
MASK_STRATEGIES: tuple[str, ...] = ("random", "magnitude")


def count_for(fraction: float, numel: int) -> int:
    """Number of entries quantized at ``fraction`` of ``numel`` (round half up, exact at 1)."""
    return min(numel, math.floor(fraction * numel + 0.5))


class IncrementalWeight(nn.Module):
    """A weight quantizer whose quantized portion grows on a schedule and then stays fixed.

    Before :meth:`start`, it is the wrapped quantizer (full fake quantization). :meth:`start`
    captures the quantizer's parameters (e.g. the INT-SE exponent, a step) as the layer's
    grid; :meth:`advance` masks more entries, quantizing them on that grid and freezing them.
    Every buffer has its final shape from construction, so checkpoints load at any stage.

    Args:
        quantizer: the layer's weight quantizer (any registered scheme).
        weight: the weight (or a tensor of the same shape) the wrapper will receive.
        strategy: ``"random"`` (seeded, identical on every rank) or ``"magnitude"``
            (largest ``|w|`` first among the unmasked entries; ties by position).
        seed: seed of the random order.

    Example:
        >>> w = nn.Parameter(torch.randn(8, 4))
        >>> iw = IncrementalWeight(Quantizer("int_se", 4, kind="weight"), w, "magnitude")
        >>> iw.start(w)
        >>> iw.advance(w, 0.5)  # entries newly frozen
        16
        >>> iw.quantized_fraction()
        0.5
    """

    def __init__(
        self,
        quantizer: Quantizer,
        weight: Tensor,
        strategy: MaskStrategy = "magnitude",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if strategy not in MASK_STRATEGIES:
            raise ValueError(
                f"strategy={strategy!r} is not allowed; allowed: {', '.join(MASK_STRATEGIES)}"
            )
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"expected a Quantizer, got {type(quantizer).__name__}")
        self.quantizer = quantizer
        self.strategy = strategy
        self.seed = int(seed)
        w = weight.detach()
        self.register_buffer("mask", torch.zeros(w.shape, dtype=torch.bool, device=w.device))
        self.register_buffer("frozen", torch.zeros_like(w, dtype=torch.float32))
        self.register_buffer("started", torch.tensor(False, device=w.device))
        with torch.no_grad():
            shapes = {k: v.shape for k, v in quantizer.parameters_for(w).items()}
        self._grid_names = tuple(shapes)
        for name, shape in shapes.items():
            self.register_buffer(f"grid_{name}", torch.zeros(shape, device=w.device))

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    @property
    def scheme(self) -> Scheme:
        return self.quantizer.scheme

    def grid(self) -> Params:
        """The captured quantizer parameters (valid once started)."""
        return {name: getattr(self, f"grid_{name}") for name in self._grid_names}

    def parameters_for(self, x: Tensor) -> Params:
        """The parameters quantizing ``x``: the fixed grid once started, else the quantizer's."""
        if bool(self.started):
            return self.grid()
        return self.quantizer.parameters_for(x)

    def quantized_fraction(self) -> float:
        """Fraction of entries that are quantized and frozen."""
        return float(self.mask.float().mean())

    @torch.no_grad()
    def start(self, source: Tensor) -> None:
        """Capture the grid from ``source`` (the current weight); no-op once started."""
        if bool(self.started):
            return
        for name, value in self.quantizer.parameters_for(source).items():
            getattr(self, f"grid_{name}").copy_(value.detach().reshape(self.grid()[name].shape))
        self.started.fill_(True)

    def _priority(self, source: Tensor) -> Tensor:
        """Score per entry (flattened): the highest are masked first."""
        if self.strategy == "magnitude":
            return source.detach().abs().flatten().float()
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(source.numel(), generator=g).to(source.device, torch.float32)

    @torch.no_grad()
    def advance(self, source: Tensor, fraction: float) -> int:
        """Quantize and freeze entries of ``source`` until ``fraction`` of them are masked.

        Entries already masked keep their frozen values; a fraction at or below the current
        one changes nothing. Returns the number of entries newly masked.
        """
        if not bool(self.started):
            raise RuntimeError("call start() before advance(): the grid is not captured yet")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} is not allowed; allowed: [0, 1]")
        flat_mask = self.mask.view(-1)
        need = count_for(fraction, flat_mask.numel()) - int(flat_mask.sum())
        if need <= 0:
            return 0
        score = self._priority(source).masked_fill(flat_mask, -math.inf)
        order = torch.sort(score, descending=True, stable=True).indices[:need]
        src = source.detach().float()
        q = self.quantizer.scheme.quantize(src, self.grid(), self.quantizer.signed()).reshape(-1)
        self.frozen.view(-1)[order] = q[order]
        flat_mask[order] = True
        return need

    def forward(self, x: Tensor | None) -> Tensor | None:
        if x is None or not bool(self.started):
            return self.quantizer(x)
        # where() is exact: a frozen entry is the buffer's value, whatever x holds there.
        return torch.where(self.mask, self.frozen.to(x.dtype), x)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy}, seed={self.seed}"


__all__ = ["MASK_STRATEGIES", "IncrementalWeight", "MaskStrategy", "count_for"]
