"""Image classification data in ``root/<class>/<image>`` folders (ImageNet and the like)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torchvision import datasets, transforms
from torchvision.datasets.folder import find_classes

from lightning_autoq.data.loading import SplitLoaders
from lightning_autoq.utils.checks import check_count

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(image_size: int) -> transforms.Compose:
    """RandomResizedCrop to ``image_size``, horizontal flip, ImageNet normalization."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize the short side to ``image_size / 0.875``, center crop, ImageNet normalization."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size / 0.875)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ImageFolderDataModule(SplitLoaders, L.LightningDataModule):
    """Train, validation and optional test sets read by torchvision's ``ImageFolder``.

    Args:
        train_dir: training images, one subfolder per class.
        val_dir: validation images, same class subfolders.
        test_dir: test images; None tests on the validation set.
        image_size: side of the square crops fed to the network.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (decoding JPEGs is the bottleneck).
    """

    in_channels = 3

    def __init__(
        self,
        train_dir: str,
        val_dir: str,
        test_dir: str | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
    ) -> None:
        super().__init__()
        check_count("image_size", image_size, 1)
        check_count("batch_size", batch_size, 1)
        check_count("num_workers", num_workers, 0)
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.test_dir = test_dir
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: datasets.ImageFolder | None = None
        self.val_set: datasets.ImageFolder | None = None
        self.test_set: datasets.ImageFolder | None = None

    @property
    def num_classes(self) -> int:
        """Number of class subfolders of ``train_dir``."""
        return len(find_classes(_check_folder("train_dir", self.train_dir))[0])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        evaluate = eval_transform(self.image_size)
        self.train_set = _image_folder(
            "train_dir", self.train_dir, train_transform(self.image_size)
        )
        self.val_set = _image_folder("val_dir", self.val_dir, evaluate)
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(
                f"val_dir={self.val_dir!r} classes differ from train_dir={self.train_dir!r}"
            )
        self.test_set = (
            _image_folder("test_dir", self.test_dir, evaluate) if self.test_dir else self.val_set
        )


def _check_folder(name: str, folder: str) -> str:
    """``folder`` if it is a directory; a FileNotFoundError naming the argument otherwise."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{name}={folder!r} is not a folder; allowed: an existing folder")
    return folder


def _image_folder(name: str, folder: str, transform: transforms.Compose) -> datasets.ImageFolder:
    """torchvision's ``ImageFolder`` of ``folder``; an empty one is refused, naming ``name``."""
    try:
        return datasets.ImageFolder(_check_folder(name, folder), transform)
    except FileNotFoundError as err:
        if not Path(folder).is_dir():
            raise
        raise ValueError(
            f"{name}={folder!r} has no images ({err}); allowed: a folder with one subfolder of "
            "images per class"
        ) from None
