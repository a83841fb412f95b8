"""Size budgets: the hinge, budget arguments, and the repair of integer widths."""

from __future__ import annotations

import pytest
import torch

from lightning_autoq.convert.budget import SizeTerm, budget_in_bits


def _term(budget_avg: float, fixed: float = 0.0) -> SizeTerm:
    return SizeTerm("weight", ["a", "b", "c"], [1000, 100, 10], [2, 2, 2], fixed, budget_avg * 1110)


def test_hinge_is_zero_inside_and_grows_with_the_excess_outside() -> None:
    term = _term(4.0)
    inside = torch.tensor([4.0, 4.0, 4.0], requires_grad=True)
    term.loss(inside).backward()
    assert term.loss(inside) == 0 and torch.equal(inside.grad, torch.zeros(3))
    over = torch.tensor([6.0, 4.0, 4.0], requires_grad=True)
    loss = term.loss(over)
    loss.backward()
    assert loss.item() == pytest.approx((6000 + 440) / 4440 - 1)
    # the gradient is each tensor's share of the budget: larger tensors are pushed harder
    torch.testing.assert_close(over.grad, torch.tensor([1000.0, 100.0, 10.0]) / 4440)


def test_repair_meets_the_budget_deterministically() -> None:
    term = _term(3.0)
    learned = {"a": 5, "b": 6, "c": 8}  # far over: 5000 + 600 + 80 > 3330
    fixed = term.repair(learned)
    assert term.size_of(fixed) <= term.budget_bits
    assert all(fixed[n] >= 2 for n in fixed)
    assert fixed == term.repair(dict(learned))
    inside = {"a": 3, "b": 3, "c": 3}
    assert term.repair(inside) == inside  # nothing to do inside the budget


def test_repair_cuts_the_widest_tensor_first() -> None:
    term = SizeTerm("weight", ["a", "b"], [10, 10], [2, 2], 0.0, 10 * 4 + 10 * 4)
    assert term.repair({"a": 3, "b": 6}) == {"a": 3, "b": 5}


def test_fill_spends_the_leftover_budget_where_learning_wanted_more() -> None:
    term = _term(3.0)  # 3330 bits for 1110 weights
    low = {"a": 2, "b": 2, "c": 2}  # 2220 bits: 1110 left
    highest = {"a": 8, "b": 8, "c": 8}
    # a was rounded down the least (2.45 -> 2), so it gains first; 1000 bits fit once.
    filled = term.fill(low, highest, {"a": 2.45, "b": 2.1, "c": 2.0})
    assert filled["a"] == 3 and term.size_of(filled) <= term.budget_bits
    # then b and c take what is left, one bit at a time, until nothing more fits
    room = term.budget_bits - term.size_of(filled)
    assert all(c > room or filled[n] == 8 for n, c in zip("abc", [1000, 100, 10], strict=True))
    assert filled == term.fill(dict(low), highest, {"a": 2.45, "b": 2.1, "c": 2.0})
    capped = term.fill(low, {"a": 2, "b": 2, "c": 3}, {"a": 2.45, "b": 2.1, "c": 2.0})
    assert capped == {"a": 2, "b": 2, "c": 3}  # the highest widths are respected
    over = {"a": 5, "b": 5, "c": 5}
    assert term.fill(over, highest, {"a": 5.0, "b": 5.0, "c": 5.0}) == over


def test_an_impossible_budget_is_refused() -> None:
    with pytest.raises(ValueError, match=r"weight budget .* is impossible.*at least"):
        SizeTerm("weight", ["a"], [100], [2], 0.0, 150.0)
    with pytest.raises(ValueError, match="impossible"):  # fixed tensors alone exceed it
        SizeTerm("weight", ["a"], [100], [2], 1000.0, 800.0)


def test_budget_arguments() -> None:
    assert budget_in_bits("weight", 100, average_bits=3.0) == 300.0
    assert budget_in_bits("weight", 100, nbytes=50) == 400.0
    assert budget_in_bits("weight", 100) is None
    with pytest.raises(ValueError, match=r"weight_budget_bits=-1.0 is not allowed; allowed: > 0"):
        budget_in_bits("weight", 100, average_bits=-1.0)
    with pytest.raises(ValueError, match=r"memory_budget_bytes=0 is not allowed"):
        budget_in_bits("memory", 100, nbytes=0)
    with pytest.raises(ValueError, match="given twice"):
        budget_in_bits("weight", 100, average_bits=3.0, nbytes=10)
