"""The DataLoader every data module builds, in one place."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset | None,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    owner: str,
    split: str = "data",
) -> DataLoader:
    """A loader over ``dataset``; a clear error if ``owner.setup()`` has not built it yet or
    it is empty (an empty loader would make an epoch of nothing, silently)."""
    if dataset is None:
        raise RuntimeError(f"call {owner}.setup() before asking for data loaders")
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"{owner} has an empty {split} set; allowed: at least one sample")
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

    def _loader(self, dataset: Dataset | None, shuffle: bool, split: str = "data") -> DataLoader:
        return make_loader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=shuffle,
            owner=type(self).__name__,
            split=split,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, split="training")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader(self.val_set, shuffle=False, split="validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, split="test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, split="test")
