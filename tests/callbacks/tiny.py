"""A tiny LightningModule and data shared by the callback tests."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoq import LayerConfig, QuantPolicy


class TinyNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 3),
        )
        self.seen_optimizer_params: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        self.seen_optimizer_params = {id(p) for g in opt.param_groups for p in g["params"]}
        return opt


def tiny_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    )
    return DataLoader(data, batch_size=12)


POLICY = QuantPolicy(
    LayerConfig("lsq", weight_bits=4, act_bits=4),
    overrides={"model.3": {"scheme": "clip", "act_bits": 3}},
)
