"""nearest_in_unit (lookup table) gives exactly nearest_in_sorted's (bucketize) indices."""

from __future__ import annotations

import pytest
import torch

from lightning_autoq.quant import Quantizer
from lightning_autoq.quant.schemes import apot as apot_module
from lightning_autoq.quant.schemes.apot import APoT
from lightning_autoq.quant.schemes.qat_common import nearest_in_sorted, nearest_in_unit


def _hard_values(levels: torch.Tensor) -> torch.Tensor:
    """The levels, their midpoints and the floats right beside each, -1, 0 and 1."""
    mids = (levels[1:] + levels[:-1]) / 2
    points = torch.cat([levels, mids, torch.tensor([-1.0, 0.0, 1.0])])
    up = torch.nextafter(points, torch.full_like(points, 2.0))
    down = torch.nextafter(points, torch.full_like(points, -2.0))
    return torch.cat([points, up, down]).clamp(-1.0, 1.0)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_apot_levels_index_like_bucketize(bits: int, signed: bool) -> None:
    values = APoT(bits).unit_level_values(signed)
    levels = torch.tensor(values)
    low = -1.0 if signed else 0.0
    u = torch.cat([torch.rand(20000) * (1.0 - low) + low, _hard_values(levels)])
    u = u.clamp(low, 1.0)
    torch.testing.assert_close(
        nearest_in_unit(u, values), nearest_in_sorted(u, levels), rtol=0, atol=0
    )


def test_close_levels_fall_back_and_one_level_is_index_zero() -> None:
    values = (0.0, 1e-6, 0.5, 1.0)  # midpoints closer than the largest table allows
    u = torch.rand(1000)
    expected = nearest_in_sorted(u, torch.tensor(values))
    assert torch.equal(nearest_in_unit(u, values), expected)
    assert torch.equal(nearest_in_unit(u, (0.5,)), torch.zeros(1000, dtype=torch.long))


def test_apot_quantizer_is_unchanged_by_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    for kind, x in (
        ("activation", torch.relu(torch.randn(8, 4, 6, 6))),
        ("weight", torch.randn(6, 4, 3, 3)),
    ):
        q = Quantizer("apot", bits=4, kind=kind)
        fast_in = x.clone().requires_grad_(True)
        fast = q(fast_in)
        fast.square().sum().backward()
        monkeypatch.setattr(
            apot_module,
            "nearest_in_unit",
            lambda u, values: nearest_in_sorted(u, torch.tensor(values, dtype=u.dtype)),
        )
        slow_in = x.clone().requires_grad_(True)
        slow = q(slow_in)
        slow.square().sum().backward()
        monkeypatch.undo()
        assert torch.equal(fast, slow) and torch.equal(fast_in.grad, slow_in.grad)
