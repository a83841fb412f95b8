"""The DataLoader every data module builds, in one place."""

from __future__ import annotations

from typing import Any

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


class SplitLoaders:
    """Loader methods of a data module with ``train_set``, ``val_set`` and ``test_set``
    (prediction uses the test set)."""

    batch_size: int
    num_workers: int
    train_set: Any
    val_set: Any
    test_set: Any

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        return make_loader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=shuffle,
            owner=type(self).__name__,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
