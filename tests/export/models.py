"""Quantized models with power-of-two scales, calibrated, shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from lightning_autoq import QuantPolicy, convert
from lightning_autoq.data.idx import read_idx
from lightning_autoq.models import resnet20

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


class PlainCNN(nn.Module):
    """Conv -> BN -> ReLU -> MaxPool, twice, then two Linear layers with biases."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, padding=1),
        )
        self.fc1 = nn.Linear(8 * 3 * 3, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


def randomize_batchnorm(model: nn.Module) -> None:
    """Give every BN non-trivial statistics and affine parameters (as after training)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)


def calibrated(model: nn.Module, policy: QuantPolicy, shape: tuple[int, ...]) -> nn.Module:
    """Convert, run three training-mode batches (running exponents), return in eval mode."""
    randomize_batchnorm(model)
    quantized = convert(model, policy).train()
    with torch.no_grad():
        for _ in range(3):
            quantized(torch.randn(8, *shape))
    return quantized.eval()


def int_se_policy(bits: int, granularity: str = "tensor", scheme: str = "int_se") -> QuantPolicy:
    return QuantPolicy(
        default={
            "scheme": scheme,
            "weight_bits": bits,
            "act_bits": bits,
            "bias_bits": 8,
            "bias_scheme": "fixed_point",
            "granularity": granularity,
        }
    )


def quantized_resnet20(bits: int = 4, scheme: str = "int_se") -> nn.Module:
    model = resnet20(num_classes=10, in_channels=1, width=8)
    return calibrated(model, int_se_policy(bits, scheme=scheme), (1, 28, 28))


def quantized_mobilenet_v2(bits: int = 8) -> nn.Module:
    model = mobilenet_v2(width_mult=0.25, num_classes=10)
    return calibrated(model, int_se_policy(bits, "channel"), (3, 32, 32))


def quantized_plain_cnn(bits: int = 6) -> nn.Module:
    return calibrated(PlainCNN(), int_se_policy(bits, scheme="fixed_point"), (1, 14, 14))


def real_images(count: int) -> torch.Tensor | None:
    """Normalized Fashion-MNIST test images, or None where the Debian package is missing."""
    if not FASHION_MNIST.exists():
        return None
    images = read_idx(FASHION_MNIST)[:count].float() / 255.0
    return ((images - 0.286) / 0.353).unsqueeze(1)
