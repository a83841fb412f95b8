"""IncrementalWeight: the INQ mask, frozen values on one grid, strategies, any scheme."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoq.quant import Quantizer, available_schemes
from lightning_autoq.quant.incremental import IncrementalWeight, count_for
from lightning_autoq.quant.schemes import scheme_class


def _wrapped(strategy: str = "magnitude", seed: int = 0, shape=(8, 4, 3, 3), **kwargs):
    w = nn.Parameter(torch.randn(shape))
    q = Quantizer("int_se", 4, kind="weight", **kwargs)
    return w, IncrementalWeight(q, w, strategy, seed)


def test_passthrough_before_start_and_fraction_grows() -> None:
    w, iw = _wrapped()
    assert torch.equal(iw(w), iw.quantizer(w))
    iw.start(w)
    for f in (0.5, 0.75, 0.875, 1.0):
        iw.advance(w, f)
        assert iw.quantized_fraction() == f
    assert torch.equal(iw(w), iw.frozen)


def test_masked_entries_are_on_the_captured_grid_and_rest_is_float() -> None:
    w, iw = _wrapped(channels=8)
    iw.start(w)
    grid = iw.grid()["exponent"].clone()
    iw.advance(w, 0.5)
    with torch.no_grad():
        w.mul_(3.0)  # a later portion is quantized on the same grid, not a new one
    iw.advance(w, 0.75)
    assert torch.equal(iw.grid()["exponent"], grid)
    out = iw(w)
    codes = iw.frozen / torch.exp2(grid)
    assert torch.equal(codes[iw.mask], torch.round(codes[iw.mask]))
    assert codes[iw.mask].abs().max() <= 8
    assert torch.equal(out[~iw.mask], w[~iw.mask])


def test_frozen_entries_stay_bit_identical_under_weight_decay_and_momentum() -> None:
    w, iw = _wrapped()
    iw.start(w)
    iw.advance(w, 0.5)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.1)
    before = iw(w).detach().clone()
    mask = iw.mask.clone()
    for _ in range(5):
        opt.zero_grad()
        out = iw(w)
        (out**2).sum().backward()
        assert torch.all(w.grad[mask] == 0) and torch.all(w.grad[~mask] != 0)
        opt.step()
    after = iw(w).detach()
    assert torch.equal(after[mask], before[mask])
    assert not torch.equal(after[~mask], before[~mask])


def test_magnitude_masks_largest_first_with_deterministic_ties() -> None:
    w, iw = _wrapped(shape=(16,))
    with torch.no_grad():
        w.copy_(torch.tensor([1.0, -5, 2, 2, 0, 7, -3, 1, 0.5, 4, -4, 6, 0, 2, 3, 1]))
    iw.start(w)
    iw.advance(w, 0.25)  # 4 entries: 7, 6, -5, then |4| ties: the first one (index 9)
    assert iw.mask.nonzero().flatten().tolist() == [1, 5, 9, 11]
    iw.advance(w, 0.5)  # next: -4 (10), then 3s: indices 6, 14, then 2s: index 2
    assert sorted(iw.mask.nonzero().flatten().tolist()) == [1, 2, 5, 6, 9, 10, 11, 14]


def test_random_masks_are_seeded() -> None:
    w, a = _wrapped("random", seed=3)
    b = IncrementalWeight(Quantizer("int_se", 4, kind="weight"), w, "random", seed=3)
    c = IncrementalWeight(Quantizer("int_se", 4, kind="weight"), w, "random", seed=4)
    for m in (a, b, c):
        m.start(w)
        m.advance(w, 0.5)
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    # Not simply the largest entries.
    _, mag = _wrapped()
    mag.start(w)
    mag.advance(w, 0.5)
    assert not torch.equal(a.mask, mag.mask)


@pytest.mark.parametrize("name", available_schemes())
def test_works_with_every_scheme(name: str) -> None:
    lo, hi = scheme_class(name).bit_range
    w = nn.Parameter(torch.randn(6, 5))
    iw = IncrementalWeight(Quantizer(name, max(lo, min(4, hi)), kind="weight"), w)
    full = iw(w).detach().clone()
    iw.start(w)
    iw.advance(w, 1.0)
    assert iw.mask.all()
    assert torch.allclose(iw(w), full, atol=1e-6)  # same grid as the last full quantization


def test_invalid_arguments_name_the_value() -> None:
    w, iw = _wrapped()
    with pytest.raises(ValueError, match="strategy='biggest'"):
        IncrementalWeight(iw.quantizer, w, "biggest")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="start"):
        iw.advance(w, 0.5)
    iw.start(w)
    with pytest.raises(ValueError, match=r"fraction=1\.5"):
        iw.advance(w, 1.5)


def test_count_for() -> None:
    assert [count_for(f, 8) for f in (0.0, 0.5, 0.875, 1.0)] == [0, 4, 7, 8]
    assert count_for(1.0, 3) == 3
