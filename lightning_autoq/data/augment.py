"""Batched, vectorized image augmentation on tensors (no per-sample Python loop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def random_crop(
    images: Tensor,
    padding: int,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pad each image by ``padding`` pixels and crop it back at a random offset.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` applied to every image of the
    batch independently, in a few tensor operations.

    Args:
        images: ``(N, C, H, W)`` batch.
        padding: pixels added on every side; 0 returns ``images`` unchanged.
        fill: value of the padded pixels, one for all channels or one per channel (for
            normalized images, the normalized value of black).
        generator: random generator on ``images``' device (default: the global one).

    Returns:
        A new ``(N, C, H, W)`` batch.
    """
    if padding < 0:
        raise ValueError(f"padding={padding} must be non-negative")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if padding == 0:
        return images
    n, c, h, w = images.shape
    fill_values = torch.as_tensor(fill, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    padded = fill_values.expand(c, h + 2 * padding, w + 2 * padding).repeat(n, 1, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = images
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=images.device, generator=generator)
    rows = offsets[0].view(n, 1, 1, 1) + torch.arange(h, device=images.device).view(1, 1, h, 1)
    cols = offsets[1].view(n, 1, 1, 1) + torch.arange(w, device=images.device).view(1, 1, 1, w)
    cropped = padded.gather(2, rows.expand(n, c, h, w + 2 * padding))
    return cropped.gather(3, cols.expand(n, c, h, w))


def random_hflip(
    images: Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """Mirror each image of an ``(N, C, H, W)`` batch left-right with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} must be in [0, 1]")
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop_flip(
    images: Tensor,
    padding: int,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The standard CIFAR augmentation: :func:`random_crop`, then :func:`random_hflip`."""
    return random_hflip(random_crop(images, padding, fill, generator), generator=generator)
