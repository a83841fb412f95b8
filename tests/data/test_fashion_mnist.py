"""FashionMNISTDataModule on tiny fake IDX files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_autoq.data import FashionMNISTDataModule, write_idx
from lightning_autoq.data import fashion_mnist as fm
from lightning_autoq.models import ImageClassifier

N_TRAIN, N_TEST = 120, 40


def write_fake_fashion_mnist(folder: Path, gz: bool = True) -> None:
    """Random images and labels in Fashion-MNIST's four files."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_fake_fashion_mnist(tmp_path)
    return tmp_path


def make(data_dir: Path, **kwargs) -> FashionMNISTDataModule:
    kwargs = {"val_size": 20, "batch_size": 16, "download": False, **kwargs}
    dm = FashionMNISTDataModule(str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


def test_shapes_dtypes_and_attributes(data_dir: Path) -> None:
    dm = make(data_dir)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 28)
    image, label = dm.test_set[0]
    assert image.shape == (1, 28, 28) and label.dtype == torch.int64


def test_normalization(data_dir: Path) -> None:
    dm = make(data_dir)
    raw = fm.read_idx(data_dir / "t10k-images-idx3-ubyte.gz")
    image, _ = dm.test_set[3]
    expected = (raw[3].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(image[0], expected)
    batch = dm.test_set.__getitems__([3, 4])
    torch.testing.assert_close(batch[0][0], image)


def test_split_sizes_and_disjointness(data_dir: Path) -> None:
    dm = make(data_dir, val_size=30)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (N_TRAIN - 30, 30, N_TEST)
    train = {tuple(x.flatten()[:64].tolist()) for x in dm.train_set.images}
    val = {tuple(x.flatten()[:64].tolist()) for x in dm.val_set.images}
    assert not train & val
    assert len(train | val) == N_TRAIN


def test_subsets(data_dir: Path) -> None:
    dm = make(data_dir, train_subset=50, test_subset=10)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 20, 10)
    with pytest.raises(ValueError, match="train_subset=500 is larger than the 100"):
        make(data_dir, train_subset=500)


def test_seeded_determinism(data_dir: Path) -> None:
    a, b, c = (
        make(data_dir, train_subset=30),
        make(data_dir, train_subset=30),
        make(data_dir, seed=1),
    )
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert torch.equal(a.train_set.labels, b.train_set.labels)
    assert not torch.equal(a.val_set.images, c.val_set.images)


def test_plain_files_and_torchvision_layout(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert len(make(tmp_path).test_set) == N_TEST


def test_vectorized_augmentation_only_in_training(data_dir: Path) -> None:
    dm = make(data_dir)
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    dm.trainer.training = True
    torch.manual_seed(0)
    images, labels = dm.on_after_batch_transfer(batch, 0)
    assert images.shape == batch[0].shape and labels is batch[1]
    assert not torch.equal(images, batch[0])
    black = (0 - 0.2860) / 0.3530
    assert torch.isclose(images, torch.tensor(black)).any()  # padded pixels
    dm.trainer.validating = True
    assert dm.on_after_batch_transfer(batch, 0)[0] is batch[0]
    dm.augment = False
    dm.trainer.training = True
    assert dm.on_after_batch_transfer(batch, 0)[0] is batch[0]


@pytest.mark.parametrize("val_size", [20, 0])
def test_fit_augments_training_batches_only(data_dir: Path, val_size: int) -> None:
    dm = FashionMNISTDataModule(str(data_dir), batch_size=16, val_size=val_size, download=False)
    augmented = []
    augment_batch = dm.augment_batch
    dm.augment_batch = lambda images: augmented.append(images.shape) or augment_batch(images)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    trainer.fit(ImageClassifier(net), datamodule=dm)
    assert augmented == [(16, 1, 28, 28)] * 2
    assert ("val/acc" in trainer.callback_metrics) == (val_size > 0)


def test_missing_files_without_download_raise(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "not-installed"))
    dm = FashionMNISTDataModule(str(tmp_path / "empty"), download=False)
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in message
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in message
    assert "not-installed" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_lookup_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", "/debian")
    assert fm.search_dirs(tmp_path) == [
        tmp_path,
        tmp_path / "FashionMNIST" / "raw",
        Path("/debian"),
    ]
    assert fm.search_dirs(None) == [Path("/debian"), Path("data/FashionMNIST/raw")]


def test_bad_arguments_raise(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        FashionMNISTDataModule(batch_size=0)
    with pytest.raises(ValueError, match="test_subset=0"):
        FashionMNISTDataModule(test_subset=0)
    with pytest.raises(ValueError, match="val_size=120 must be smaller than the 120"):
        make(data_dir, val_size=N_TRAIN)


def test_malformed_image_file_raises(data_dir: Path) -> None:
    write_idx(
        data_dir / "t10k-images-idx3-ubyte.gz", torch.zeros(N_TEST, 32, 32, dtype=torch.uint8)
    )
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        make(data_dir)


def test_search_split_is_held_out_of_training(data_dir: Path) -> None:
    plain = make(data_dir)
    dm = make(data_dir, search_size=30)
    assert len(dm.search_set) == 30 and len(dm.train_set) == len(plain.train_set) - 30
    # Disjoint from training and validation, together they are the old training set.
    rows = lambda ds: {bytes(img.numpy()) for img in ds.images}  # noqa: E731
    assert not rows(dm.search_set) & rows(dm.train_set)
    assert not rows(dm.search_set) & rows(dm.val_set)
    assert rows(dm.search_set) | rows(dm.train_set) == rows(plain.train_set)
    assert rows(make(data_dir, search_size=30).search_set) == rows(dm.search_set)  # seeded
    images, labels = next(iter(dm.search_dataloader()))
    assert images.shape == (16, 1, 28, 28) and labels.dtype == torch.int64
    dm.setup("fit")  # idempotent
    assert len(dm.train_set) == len(plain.train_set) - 30


def test_search_split_errors(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="search_size > 0"):
        make(data_dir).search_dataloader()
    with pytest.raises(ValueError, match=r"search_size=-1 is not allowed"):
        make(data_dir, search_size=-1)
    with pytest.raises(ValueError, match=r"search_size=100 must be smaller than the 100"):
        make(data_dir, search_size=100)
