"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torchvision import datasets

from lightning_autoq.data.in_memory import InMemoryImageDataModule


class CIFARDataModule(InMemoryImageDataModule):
    """Shared base of the CIFAR DataModules: torchvision's files, held in memory.

    Images are normalized with the training set's per-channel mean and std and, in training,
    randomly cropped (32x32 after 4 black pixels of padding) and flipped, batch-wise.

    Args:
        data_dir: torchvision root the files are read from (and downloaded into).
        download: download with torchvision when the files are missing.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        val_size: training images held out for validation (seeded random split).
        train_subset: keep a seeded random subset of this many training images.
        test_subset: keep a seeded random subset of this many test images.
        augment: augment training batches.
        seed: seed of the split and the subsets.
    """

    dataset_class: ClassVar[type[datasets.CIFAR10]]
    in_channels = 3
    image_size = 32
    padding = 4

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        train_subset: int | None = None,
        test_subset: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size, num_workers, val_size, train_subset, test_subset, augment, seed
        )
        self.data_dir = data_dir
        self.download = download

    def prepare_data(self) -> None:
        for train in (True, False):
            self.dataset_class(self.data_dir, train=train, download=self.download)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        arrays: list[Tensor] = []
        for train in (True, False):
            dataset = self.dataset_class(self.data_dir, train=train, download=self.download)
            arrays.append(torch.as_tensor(dataset.data).permute(0, 3, 1, 2).contiguous())
            arrays.append(torch.as_tensor(dataset.targets, dtype=torch.long))
        train_images, train_labels, test_images, test_labels = arrays
        return train_images, train_labels, test_images, test_labels


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 50k training and 10k test 32x32 color images of 10 classes."""

    dataset_class = datasets.CIFAR10
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: 50k training and 10k test 32x32 color images of 100 classes."""

    dataset_class = datasets.CIFAR100
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
