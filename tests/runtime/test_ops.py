"""Integer kernels: exact against float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from lightning_autoq.runtime import ops


@given(
    st.lists(st.integers(-(2**30), 2**30), min_size=1, max_size=64),
    st.integers(-4, 12),
    st.sampled_from([1, 3, 49]),
)
def test_round_shift_is_round_half_even_of_the_exact_quotient(
    values: list[int], shift: int, divisor: int
) -> None:
    x = torch.tensor(values, dtype=torch.int64)
    got = ops.round_shift(x, torch.tensor(shift), divisor)
    exact = x.double() / (divisor * 2.0**shift)  # exact: |x| < 2^31, small divisors
    assert torch.equal(got, torch.round(exact).to(torch.int64))


def test_round_shift_breaks_ties_to_even_like_torch_round() -> None:
    x = torch.tensor([1, 3, 5, -1, -3, 2, 6])  # halves after a shift of one
    assert ops.round_shift(x, torch.tensor(1)).tolist() == [0, 2, 2, 0, -2, 1, 3]


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("x_range", [(-128, 127), (0, 255), (-1000, 1000)])
def test_conv_equals_the_float64_convolution(groups: int, x_range: tuple[int, int]) -> None:
    x = torch.randint(x_range[0], x_range[1] + 1, (2, 8, 9, 7), dtype=torch.int32)
    weight = torch.randint(-128, 128, (16, 8 // groups, 3, 3), dtype=torch.int8)
    w_t = weight.reshape(16, -1).t().contiguous()
    w_sum = w_t.to(torch.int32).sum(dim=0)
    got = ops.conv(x, weight, w_t, w_sum, [2, 1], [1, 0], [1, 2], groups, x_range)
    expected = F.conv2d(x.double(), weight.double(), None, (2, 1), (1, 0), (1, 2), groups)
    assert got.dtype == torch.int32
    assert torch.equal(got.double(), expected)


def test_conv1d_and_linear_equal_float64() -> None:
    x = torch.randint(-8, 8, (3, 4, 10), dtype=torch.int32)
    weight = torch.randint(-8, 8, (5, 4, 3), dtype=torch.int8)
    w_t = weight.reshape(5, -1).t().contiguous()
    got = ops.conv(x, weight, w_t, None, [2], [1], [1], 1, (-8, 7))
    assert torch.equal(got.double(), F.conv1d(x.double(), weight.double(), None, 2, 1))
    a = torch.randint(0, 256, (4, 12), dtype=torch.int32)
    w = torch.randint(-128, 128, (12, 3), dtype=torch.int8)
    got = ops.linear(a, w, (0, 255), w.to(torch.int32).sum(0))
    assert torch.equal(got.double(), a.double() @ w.double())


def test_pooling_equals_float64() -> None:
    x = torch.randint(-50, 50, (2, 3, 8, 8), dtype=torch.int32)
    sums = ops.sum_pool(x, [2, 4], [2, 4])
    assert torch.equal(sums.double(), F.avg_pool2d(x.double(), (2, 4)) * 8)
    got = ops.max_pool(x, [3, 3], [2, 2], [1, 1], [1, 1])
    assert torch.equal(got.double(), F.max_pool2d(x.double(), 3, 2, 1))


@given(
    st.lists(st.integers(-(2**24), 2**24), min_size=4, max_size=4),
    st.lists(st.integers(0, 10), min_size=2, max_size=2),
)
def test_requant_per_channel_shifts_equal_round_then_clamp(values: list[int], shifts: list[int]):
    x = torch.tensor(values, dtype=torch.int32).reshape(2, 2)  # channels on dimension 1
    shift = torch.tensor(shifts, dtype=torch.int32).reshape(1, 2)
    expected = torch.round(x.double() / torch.exp2(shift.double())).clamp(-128, 127)
    assert torch.equal(ops.requant(x, shift, 1, -128, 127).double(), expected)
