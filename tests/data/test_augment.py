"""Batched crop and flip against a per-image reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_autoq.data.augment import random_crop, random_crop_flip, random_hflip


def test_random_crop_matches_per_image_reference() -> None:
    images = torch.randn(16, 3, 8, 8)
    fill = (-1.0, -2.0, -3.0)
    out = random_crop(images, 2, fill, generator=torch.Generator().manual_seed(0))
    offsets = torch.randint(0, 5, (2, 16), generator=torch.Generator().manual_seed(0))
    for i in range(16):
        padded = torch.stack([F.pad(images[i, c], (2, 2, 2, 2), value=fill[c]) for c in range(3)])
        top, left = offsets[:, i].tolist()
        assert torch.equal(out[i], padded[:, top : top + 8, left : left + 8])


def test_random_crop_covers_all_offsets() -> None:
    images = torch.zeros(400, 1, 4, 4)
    out = random_crop(images, 1, fill=1.0, generator=torch.Generator().manual_seed(0))
    patterns = {tuple(o.flatten().tolist()) for o in out}
    assert len(patterns) == 9


def test_random_hflip() -> None:
    images = torch.randn(64, 1, 4, 4)
    out = random_hflip(images, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, x.flip(2)) for o, x in zip(out, images, strict=True)]
    same = [torch.equal(o, x) for o, x in zip(out, images, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 10 < sum(flipped) < 54
    assert torch.equal(random_hflip(images, p=0.0), images)


def test_crop_flip_keeps_shape_and_dtype() -> None:
    images = torch.randn(5, 1, 28, 28)
    out = random_crop_flip(images, 2, -0.81)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert random_crop(images, 0) is images


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="padding=-1"):
        random_crop(torch.zeros(1, 1, 4, 4), -1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(torch.zeros(4, 4), 1)
    with pytest.raises(ValueError, match="p=2"):
        random_hflip(torch.zeros(1, 1, 4, 4), p=2)
