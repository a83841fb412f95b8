"""ImageClassifier: a real fit, optimizer groups, init_checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoq.models import ImageClassifier, resnet20, weight_decay_groups


class RandomImages(L.LightningDataModule):
    """A few random 1x28x28 images with random labels."""

    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.dataset = TensorDataset(
            torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        )
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)


def tiny_net() -> nn.Module:
    return resnet20(in_channels=1, width=4)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        **kwargs,
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fit_and_test_log_metrics(optimizer: str) -> None:
    module = ImageClassifier(tiny_net(), optimizer=optimizer, lr=0.01, label_smoothing=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    t = trainer()
    t.fit(module, datamodule=RandomImages())
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(t.callback_metrics)
    assert 0.0 <= float(t.callback_metrics["val/acc"]) <= 1.0
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))
    t.test(module, datamodule=RandomImages())
    assert {"test/loss", "test/acc"} <= set(t.callback_metrics)


def test_cosine_schedule_steps_per_epoch() -> None:
    module = ImageClassifier(tiny_net(), lr=0.1)
    t = trainer()
    t.fit(module, datamodule=RandomImages())
    (config,) = t.lr_scheduler_configs
    assert config.interval == "epoch"
    assert config.scheduler.T_max == 1
    assert module.hparams.lr == 0.1 and "model" not in module.hparams


def test_weight_decay_groups_split() -> None:
    class WithQuantizer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)
            self.weight_quant = nn.Module()
            self.weight_quant.scale = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(2, 2)
            self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)

    net = WithQuantizer()
    module = ImageClassifier(net, weight_decay=1e-3, scheduler="none")
    optimizer = module.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]) == ids([net.conv.weight, net.fc.weight])
    expected = [net.conv.bias, net.bn.weight, net.bn.bias, net.weight_quant.scale, net.fc.bias]
    assert ids(no_decay["params"]) == ids(expected)


def test_weight_decay_groups_drop_empty_group() -> None:
    groups = weight_decay_groups(nn.BatchNorm2d(3), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"optimizer='adam'.*'sgd', 'adamw'"):
        ImageClassifier(tiny_net(), optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scheduler='step'.*'cosine', 'none'"):
        ImageClassifier(tiny_net(), scheduler="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"label_smoothing=1\.0"):
        ImageClassifier(tiny_net(), label_smoothing=1.0)


def randomized(net: nn.Module) -> nn.Module:
    """``net`` with every parameter and buffer set to distinct random values."""
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.randn_like(tensor).abs()
                    if "running_var" in name
                    else torch.randn_like(tensor)
                )
            else:
                tensor.fill_(7)
    return net


def test_init_checkpoint_from_lightning_checkpoint(tmp_path: Path) -> None:
    source = ImageClassifier(randomized(tiny_net()))
    t = trainer()
    t.strategy.connect(source)
    path = tmp_path / "source.ckpt"
    t.save_checkpoint(path)
    loaded = ImageClassifier(tiny_net(), init_checkpoint=str(path))
    expected = source.model.state_dict()
    assert loaded.model.state_dict().keys() == expected.keys()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_init_checkpoint_from_plain_state_dict(tmp_path: Path) -> None:
    source = randomized(tiny_net())
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = ImageClassifier(tiny_net(), init_checkpoint=str(path))
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_init_checkpoint_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(resnet20(in_channels=1, width=4, shortcut="B").state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected keys \[layer2\.0\.shortcut\.0\.weight"):
        ImageClassifier(tiny_net(), init_checkpoint=str(path))
    torch.save(resnet20(in_channels=3, width=4).state_dict(), path)
    with pytest.raises(ValueError, match=r"conv1\.weight: \(4, 3, 3, 3\) vs model \(4, 1, 3, 3\)"):
        ImageClassifier(tiny_net(), init_checkpoint=str(path))
    state = tiny_net().state_dict()
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \[fc\.bias\]"):
        ImageClassifier(tiny_net(), init_checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        ImageClassifier(tiny_net(), init_checkpoint=str(tmp_path / "nope.ckpt"))
