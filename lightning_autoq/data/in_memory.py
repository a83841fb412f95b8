"""Small image datasets kept in memory as uint8 tensors: normalized on access, batch-augmented."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_autoq.data.augment import random_crop_flip
from lightning_autoq.data.loading import SplitLoaders
from lightning_autoq.utils.checks import check_count


class TensorImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """``(image, label)`` pairs from uint8 tensors, normalized to float on access.

    Args:
        images: ``(N, C, H, W)`` uint8 pixels.
        labels: ``(N,)`` class indices.
        mean: per-channel mean of the pixels scaled to ``[0, 1]``.
        std: per-channel standard deviation, likewise.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean {mean} and std {std} need one value per channel")
        self.images = images
        self.labels = labels.long()
        self.scale = torch.tensor([1 / (255 * s) for s in std]).view(-1, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float() * self.scale - self.shift, self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Batched fetch used by ``DataLoader``: one indexing and normalization per batch."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index].float() * self.scale - self.shift
        return list(zip(images.unbind(0), self.labels[index].unbind(0), strict=True))


class InMemoryImageDataModule(SplitLoaders, L.LightningDataModule):
    """Base for datasets small enough to keep in memory: split, subsets, loaders, augmentation.

    Subclasses set the class attributes and implement :meth:`load`. The validation set is a
    seeded random split of the training set; augmentation (random crop with ``padding`` and
    a horizontal flip) runs on whole batches in :meth:`on_after_batch_transfer`, in training
    only, on the device the batch was moved to.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        val_size: training images held out for validation (0: no validation set).
        train_subset: keep a seeded random subset of this many training images.
        test_subset: keep a seeded random subset of this many test images.
        augment: augment training batches.
        seed: seed of the split and the subsets.
    """

    num_classes: ClassVar[int]
    in_channels: ClassVar[int]
    image_size: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    padding: ClassVar[int]

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        train_subset: int | None = None,
        test_subset: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_count("batch_size", batch_size, 1)
        check_count("num_workers", num_workers, 0)
        check_count("val_size", val_size, 0)
        for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
            if value is not None:
                check_count(name, value, 1, "or None (all images)")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.augment = augment
        self.seed = seed
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The whole dataset: train images, train labels, test images, test labels.

        Images are uint8 ``(N, C, H, W)``, labels int64 ``(N,)``.
        """
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_images, train_labels, test_images, test_labels = self.load()
        n_train, n_test = len(train_labels), len(test_labels)
        if n_train == 0 or n_test == 0:
            raise ValueError(
                f"{type(self).__name__} loaded {n_train} training and {n_test} test images; "
                "allowed: a dataset with images in both splits (check the data files)"
            )
        if self.val_size >= n_train:
            raise ValueError(
                f"val_size={self.val_size} must be smaller than the {n_train} training images"
            )
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n_train, generator=generator)
        val_index, train_index = order[: self.val_size], order[self.val_size :]
        train_index = self._subset(train_index, self.train_subset, "train_subset")
        test_index = torch.arange(n_test)
        if self.test_subset is not None:
            test_order = torch.randperm(n_test, generator=torch.Generator().manual_seed(self.seed))
            test_index = self._subset(test_order, self.test_subset, "test_subset")

        def make(images: Tensor, labels: Tensor, index: Tensor) -> TensorImageDataset:
            return TensorImageDataset(images[index], labels[index], self.mean, self.std)

        self.train_set = make(train_images, train_labels, train_index)
        self.val_set = make(train_images, train_labels, val_index)
        self.test_set = make(test_images, test_labels, test_index)

    @staticmethod
    def _subset(index: Tensor, size: int | None, name: str) -> Tensor:
        if size is None:
            return index
        if size > len(index):
            raise ValueError(f"{name}={size} is larger than the {len(index)} images available")
        return index[:size]

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.val_size == 0:
            return []
        return super().val_dataloader()

    @property
    def fill(self) -> tuple[float, ...]:
        """The normalized value of a black pixel, per channel: what crops pad with."""
        return tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))

    def augment_batch(self, images: Tensor) -> Tensor:
        """Random crop with ``padding`` black pixels, then a random horizontal flip."""
        return random_crop_flip(images, self.padding, self.fill)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.augment and self.trainer is not None and self.trainer.training:
            images, labels = batch
            batch = (self.augment_batch(images), labels)
        return batch
