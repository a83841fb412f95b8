"""LightningDataModules for the recipes, and the IDX reader behind Fashion-MNIST."""

from lightning_autoq.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_autoq.data.fashion_mnist import FashionMNISTDataModule
from lightning_autoq.data.idx import IDXFormatError, read_idx, write_idx
from lightning_autoq.data.image_folder import ImageFolderDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "IDXFormatError",
    "ImageFolderDataModule",
    "read_idx",
    "write_idx",
]
