"""ImageFolderDataModule on a few tiny PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_autoq.data import ImageFolderDataModule


def write_images(root: Path, classes: tuple[str, ...], per_class: int = 2) -> None:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    write_images(tmp_path / "train", ("cat", "dog", "owl"))
    write_images(tmp_path / "val", ("cat", "dog", "owl"), per_class=1)
    dm = ImageFolderDataModule(
        str(tmp_path / "train"), str(tmp_path / "val"), image_size=16, batch_size=4, num_workers=0
    )
    assert dm.num_classes == 3
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    images, labels = next(iter(dm.test_dataloader()))  # the validation set: no test_dir
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 1, 2]


def test_class_mismatch_and_bad_arguments(tmp_path: Path) -> None:
    write_images(tmp_path / "train", ("cat", "dog"))
    write_images(tmp_path / "val", ("cat", "owl"))
    dm = ImageFolderDataModule(str(tmp_path / "train"), str(tmp_path / "val"), num_workers=0)
    with pytest.raises(ValueError, match="classes differ"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="image_size=0"):
        ImageFolderDataModule("a", "b", image_size=0)
