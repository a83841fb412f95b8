"""Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747) from local IDX files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_autoq.data.idx import read_idx
from lightning_autoq.data.in_memory import InMemoryImageDataModule, TensorImageDataset
from lightning_autoq.utils.checks import check_count

FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four IDX files, each found plain or with a ``.gz`` suffix."""

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the files."""

DEFAULT_ROOT = "data"
"""torchvision's download root when ``data_dir`` is None."""


def search_dirs(data_dir: str | Path | None) -> list[Path]:
    """Folders searched for the files, in order.

    ``data_dir`` and its ``FashionMNIST/raw`` (torchvision's layout), then :data:`DEBIAN_DIR`,
    then ``data/FashionMNIST/raw`` when ``data_dir`` is None.
    """
    root = Path(data_dir) if data_dir is not None else None
    dirs = [root, root / "FashionMNIST" / "raw"] if root is not None else []
    dirs.append(Path(DEBIAN_DIR))
    if root is None:
        dirs.append(Path(DEFAULT_ROOT) / "FashionMNIST" / "raw")
    return dirs


def find_files(dirs: list[Path]) -> dict[str, Path] | None:
    """The four files from the first folder that holds all of them, or None."""
    for folder in dirs:
        found = {}
        for name in FILES:
            for path in (folder / name, folder / f"{name}.gz"):
                if path.is_file():
                    found[name] = path
                    break
        if len(found) == len(FILES):
            return found
    return None


class FashionMNISTDataModule(InMemoryImageDataModule):
    """Fashion-MNIST: 60k training and 10k test 28x28 grayscale images of 10 clothing classes.

    Files are looked up in ``data_dir`` (and its ``FashionMNIST/raw``), then in
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``), and
    downloaded with torchvision into ``data_dir`` (default ``data``) as a last resort when
    ``download`` is True. Images come out normalized with mean 0.2860 and std 0.3530, shape
    ``(1, 28, 28)``; labels are int64.

    Args:
        data_dir: folder with the four IDX files (plain or gzipped).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        val_size: training images held out for validation (seeded random split).
        train_subset: keep a seeded random subset of this many training images.
        test_subset: keep a seeded random subset of this many test images.
        augment: random crop (2 black pixels of padding) and horizontal flip of training
            batches, vectorized on the batch's device.
        seed: seed of the split and the subsets.
        download: download with torchvision when no local copy is found.
        search_size: training images held out (seeded, after ``train_subset``) for the
            ``theta`` steps of :class:`~lightning_autoq.callbacks.scheme_search.SchemeSearch`,
            served by :meth:`search_dataloader` and excluded from the training set; 0: none.

    Example:
        >>> dm = FashionMNISTDataModule(batch_size=256, train_subset=10_000)
        >>> dm.setup("fit")  # doctest: +SKIP
    """

    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.2860,)
    std = (0.3530,)
    padding = 2

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        train_subset: int | None = None,
        test_subset: int | None = None,
        augment: bool = True,
        seed: int = 0,
        download: bool = True,
        search_size: int = 0,
    ) -> None:
        super().__init__(
            batch_size, num_workers, val_size, train_subset, test_subset, augment, seed
        )
        check_count("search_size", search_size, 0)
        self.data_dir = data_dir
        self.download = download
        self.search_size = search_size
        self.search_set: TensorImageDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        first = self.train_set is None
        super().setup(stage)
        if first and self.search_size > 0:
            self._carve_search_split()

    def _carve_search_split(self) -> None:
        """Move a seeded random ``search_size`` of the training images to ``search_set``."""
        train = self.train_set
        assert train is not None
        if self.search_size >= len(train):
            raise ValueError(
                f"search_size={self.search_size} must be smaller than the {len(train)} "
                "training images"
            )
        generator = torch.Generator().manual_seed(self.seed + 1)
        order = torch.randperm(len(train), generator=generator)
        search_index, train_index = order[: self.search_size], order[self.search_size :]
        self.search_set = TensorImageDataset(
            train.images[search_index], train.labels[search_index], self.mean, self.std
        )
        self.train_set = TensorImageDataset(
            train.images[train_index], train.labels[train_index], self.mean, self.std
        )

    def search_dataloader(self) -> DataLoader:
        """Shuffled batches of the held-out search split (no augmentation)."""
        if self.search_size == 0:
            raise ValueError(
                "FashionMNISTDataModule has no search split: set search_size > 0 (e.g. 20 % of "
                "the training images) to hold out images for SchemeSearch"
            )
        return self._loader(self.search_set, shuffle=True, split="search")

    def prepare_data(self) -> None:
        self.locate()

    def locate(self) -> dict[str, Path]:
        """Paths of the four files, downloading them if allowed and needed.

        Raises:
            FileNotFoundError: no local copy and ``download`` is False.
        """
        dirs = search_dirs(self.data_dir)
        found = find_files(dirs)
        if found is not None:
            return found
        if not self.download:
            wanted = ", ".join(f"{name}[.gz]" for name in FILES)
            looked = ", ".join(str(d) for d in dirs)
            raise FileNotFoundError(
                f"Fashion-MNIST not found: looked for {wanted} in {looked}. Install Debian's "
                "copy with `apt-get install dataset-fashion-mnist`, pass data_dir=<folder with "
                "the files>, or set download=True."
            )
        return self._download()

    def _download(self) -> dict[str, Path]:
        from torchvision.datasets import FashionMNIST

        root = Path(self.data_dir or DEFAULT_ROOT)
        try:
            for train in (True, False):
                FashionMNIST(root=str(root), train=train, download=True)
        except (OSError, RuntimeError) as err:
            raise RuntimeError(
                f"downloading Fashion-MNIST into {str(root)!r} failed ({err}); without network, "
                "`apt-get install dataset-fashion-mnist` or pass data_dir=<folder with the files>"
            ) from err
        found = find_files([root / "FashionMNIST" / "raw"])
        if found is None:
            raise FileNotFoundError(f"torchvision's download left no IDX files in {str(root)!r}")
        return found

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        files = self.locate()
        arrays = [read_idx(files[name]) for name in FILES]
        for images, labels in (arrays[:2], arrays[2:]):
            if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != torch.uint8:
                raise ValueError(
                    f"Fashion-MNIST images must be uint8 (N, 28, 28), got "
                    f"{images.dtype} {tuple(images.shape)}"
                )
            if labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{labels.shape[0]} labels do not match {images.shape[0]} Fashion-MNIST images"
                )
            if labels.numel() and int(labels.max()) >= self.num_classes:
                raise ValueError(f"Fashion-MNIST label {int(labels.max())} is not in 0..9")
        train_images, train_labels, test_images, test_labels = arrays
        return (
            train_images.unsqueeze(1),
            train_labels.long(),
            test_images.unsqueeze(1),
            test_labels.long(),
        )
