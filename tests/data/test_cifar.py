"""CIFAR DataModules, with torchvision's dataset replaced by a tiny fake."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_autoq.data import CIFAR10DataModule, CIFAR100DataModule


def fake_cifar(num_classes: int):
    class FakeCIFAR:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            rng = np.random.default_rng(0 if train else 1)
            n = 60 if train else 20
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = rng.integers(0, num_classes, n).tolist()

    return FakeCIFAR


@pytest.mark.parametrize(("cls", "classes"), [(CIFAR10DataModule, 10), (CIFAR100DataModule, 100)])
def test_cifar_datamodule(monkeypatch, cls, classes: int) -> None:
    monkeypatch.setattr(cls, "dataset_class", fake_cifar(classes))
    dm = cls(val_size=10, train_subset=30, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 20)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    assert dm.num_classes == classes and dm.in_channels == 3 and dm.padding == 4
    raw = torch.as_tensor(fake_cifar(classes)("", train=False).data[0]).permute(2, 0, 1)
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    torch.testing.assert_close(dm.test_set[0][0], (raw / 255 - mean) / std)
    augmented = dm.augment_batch(images)
    assert augmented.shape == images.shape and not torch.equal(augmented, images)
