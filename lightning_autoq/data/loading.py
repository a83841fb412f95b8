"""The DataLoader every data module builds, in one place."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset | None, *, batch_size: int, num_workers: int, shuffle: bool, owner: str
) -> DataLoader:
    """A loader over ``dataset``; a clear error if ``owner.setup()`` has not built it yet."""
    if dataset is None:
        raise RuntimeError(f"call {owner}.setup() before asking for data loaders")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
