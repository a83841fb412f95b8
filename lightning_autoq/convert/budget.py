"""Size budgets of a mixed-precision model: the precision loss and the repair of a policy.

AutoQNN's precision learning (Gong et al. 2024, https://arxiv.org/abs/2304.03782) adds
``gamma * L_prec`` to the task loss, ``L_prec`` penalising the model size (``sum n_l b_l``
over the weight tensors) and the memory footprint (activation elements times their bits)
above their targets. The exact form is not published; ours is a hinge on the relative excess,
``max(0, size / budget - 1)``: zero inside the budget, so bits within budget are left to the
task loss alone.

A :class:`SizeTerm` is one such sum: the learned tensors (an element count and a bit-width
each) plus a constant part (tensors whose bits are not learned) against a budget in bits.
:meth:`SizeTerm.repair` makes integer bit-widths meet the budget deterministically, and
:meth:`SizeTerm.fill` spends what rounding and the dynamics left of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def budget_in_bits(
    what: str,
    total_elements: int,
    average_bits: float | None = None,
    nbytes: float | None = None,
) -> float | None:
    """A budget in bits from a target average bit-width or a byte count (not both).

    Args:
        what: the budget's name, for error messages (``"weight"``, ``"memory"``).
        total_elements: element count the average applies to.
        average_bits: target average bit-width (> 0).
        nbytes: budget in bytes (> 0).

    Returns:
        The budget in bits, or None when neither is given.
    """
    if average_bits is not None and nbytes is not None:
        raise ValueError(
            f"{what} budget given twice (average bits={average_bits}, bytes={nbytes}); "
            "allowed: one of them"
        )
    for name, value in (("bits", average_bits), ("bytes", nbytes)):
        if value is not None and (isinstance(value, bool) or not float(value) > 0):
            raise ValueError(f"{what}_budget_{name}={value!r} is not allowed; allowed: > 0")
    if average_bits is not None:
        return float(average_bits) * total_elements
    if nbytes is not None:
        return 8.0 * float(nbytes)
    return None


@dataclass
class SizeTerm:
    """``size = fixed_bits + sum_i counts[i] * bits[i]`` against ``budget_bits``.

    Args:
        what: name for messages and logs (``"weight"``, ``"memory"``).
        names: one name per learned tensor.
        counts: element count of each learned tensor.
        lowest: smallest bit-width of each learned tensor.
        fixed_bits: bits of the tensors whose widths are not learned.
        budget_bits: the budget.
        fixed_elements: element count of the tensors whose widths are not learned.

    Example:
        >>> term = SizeTerm("weight", ["a", "b"], [100, 10], [2, 2], 0.0, 3.0 * 110)
        >>> term.repair({"a": 4, "b": 4})
        {'a': 3, 'b': 3}
    """

    what: str
    names: Sequence[str]
    counts: Sequence[int]
    lowest: Sequence[int]
    fixed_bits: float
    budget_bits: float
    fixed_elements: int = 0

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.counts) == len(self.lowest):
            raise ValueError("names, counts and lowest must have one entry per tensor")
        smallest = self.size_of(dict(zip(self.names, self.lowest, strict=True)))
        if smallest > self.budget_bits:
            raise ValueError(
                f"the {self.what} budget of {self.budget_bits / 8:.1f} bytes "
                f"({self.budget_bits / max(self.total_elements, 1):.3f} bits on average) is "
                f"impossible: with every learned tensor at its smallest width "
                f"({min(self.lowest, default=0)}+ bits) the {self.what} size is "
                f"{smallest / 8:.1f} bytes; allowed: a budget of at least that"
            )

    @property
    def total_elements(self) -> int:
        """Element count of every tensor, learned and fixed."""
        return int(sum(self.counts)) + self.fixed_elements

    def size_of(self, bits: Mapping[str, int | float]) -> float:
        """Size in bits for integer widths ``{name: bits}``."""
        return self.fixed_bits + sum(
            c * bits[n] for n, c in zip(self.names, self.counts, strict=True)
        )

    def size(self, bits: Tensor) -> Tensor:
        """Differentiable size in bits for widths ``bits`` (one per learned tensor)."""
        counts = torch.tensor([float(c) for c in self.counts], dtype=bits.dtype, device=bits.device)
        return self.fixed_bits + (counts * bits).sum()

    def loss(self, bits: Tensor) -> Tensor:
        """Hinge on the relative excess: ``max(0, size / budget - 1)``."""
        return torch.relu(self.size(bits) / self.budget_bits - 1.0)

    def repair(self, bits: Mapping[str, int]) -> dict[str, int]:
        """Integer widths that meet the budget: greedily remove one bit at a time.

        While over budget, the tensor with the most bits above its lowest width loses one bit;
        ties go to the larger tensor (more bytes saved), then to the first name. High widths
        lose the least relative precision per bit removed, so the repair spreads the cut
        rather than flattening one layer. Widths inside the budget are returned unchanged.
        """
        out = {n: int(bits[n]) for n in self.names}
        lowest = dict(zip(self.names, self.lowest, strict=True))
        counts = dict(zip(self.names, self.counts, strict=True))
        order = {n: i for i, n in enumerate(self.names)}
        while self.size_of(out) > self.budget_bits:
            movable = [n for n in self.names if out[n] > lowest[n]]
            if not movable:  # unreachable after the check in __post_init__
                raise ValueError(f"the {self.what} budget cannot be met")
            pick = min(movable, key=lambda n: (-out[n], -counts[n], order[n]))
            out[pick] -= 1
        return out

    def fill(
        self,
        bits: Mapping[str, int],
        highest: Mapping[str, int],
        learned: Mapping[str, float],
    ) -> dict[str, int]:
        """Integer widths raised into the budget left over, one bit at a time.

        While some tensor below its ``highest`` width can gain a bit within the budget, the
        one whose ``learned`` (continuous) width is furthest above its integer width gets it:
        the tensor the learning wanted widest relative to what it has; ties go to the smaller
        tensor (cheaper), then to the first name. Widths over budget are returned unchanged
        (:meth:`repair` first).

        Example:
            >>> term = SizeTerm("weight", ["a", "b"], [100, 10], [2, 2], 0.0, 3.0 * 110)
            >>> term.fill({"a": 2, "b": 2}, {"a": 8, "b": 8}, {"a": 2.4, "b": 2.3})
            {'a': 3, 'b': 3}
        """
        out = {n: int(bits[n]) for n in self.names}
        counts = dict(zip(self.names, self.counts, strict=True))
        order = {n: i for i, n in enumerate(self.names)}
        while True:
            room = self.budget_bits - self.size_of(out)
            fits = [n for n in self.names if out[n] < highest[n] and counts[n] <= room]
            if not fits:
                return out
            pick = max(fits, key=lambda n: (learned[n] - out[n], -counts[n], -order[n]))
            out[pick] += 1


__all__ = ["SizeTerm", "budget_in_bits"]
