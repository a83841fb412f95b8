"""ResNet for CIFAR-size images (He et al. 2016, https://arxiv.org/abs/1512.03385, section 4.2).

A ``6n + 2``-layer network: a 3x3 stem, three stages of ``n`` basic blocks with ``width``,
``2 width`` and ``4 width`` channels (the last two downsample by 2), global average pooling
and a linear classifier. Every layer is a plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
``nn.ReLU`` / ``nn.Linear`` module and the forward pass has no data-dependent control flow,
so module-swap converters see every layer and ``torch.fx.symbolic_trace`` works.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Literal["A", "B"]
SHORTCUTS: tuple[str, ...] = ("A", "B")


class PadShortcut(nn.Module):
    """Parameter-free shortcut (option A): subsample by ``stride``, zero-pad the channels.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of the block output (``>= in_channels``).
        stride: spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"out_channels={out_channels} must be >= in_channels={in_channels} "
                "for the zero-padding shortcut"
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual connection, ReLU after the addition.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (2 to downsample).
        shortcut: ``"A"`` (parameter-free) or ``"B"`` (1x1 conv + BN projection) for the
            shortcut when the shape changes; an identity otherwise.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: Shortcut = "A"
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet with ``depth = 6n + 2`` layers (ResNet-20/32/44/56/110).

    Works for any input at least 4x4 pixels (28x28 Fashion-MNIST, 32x32 CIFAR).

    Args:
        depth: number of weighted layers, ``6n + 2`` with ``n >= 1``.
        num_classes: size of the classifier output.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        width: channels of the first stage (16 in the paper); stages use 1x, 2x, 4x.
        shortcut: ``"A"`` (subsample + zero-pad, no parameters, as in the paper's CIFAR
            experiments) or ``"B"`` (1x1 conv + BN projection) where the shape changes.

    Example:
        >>> import torch
        >>> net = CifarResNet(depth=20, in_channels=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth={depth} is not 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is not one of {SHORTCUTS}")
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("width", width),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        blocks = (depth - 2) // 6
        self.depth = depth

        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(width, width, blocks, 1, shortcut)
        self.layer2 = self._stage(width, 2 * width, blocks, 2, shortcut)
        self.layer3 = self._stage(2 * width, 4 * width, blocks, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)
        self.reset_parameters()

    @staticmethod
    def _stage(
        in_channels: int, out_channels: int, blocks: int, stride: int, shortcut: Shortcut
    ) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride, shortcut)]
        layers += [BasicBlock(out_channels, out_channels, 1, shortcut) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions (fan_out), BN to identity, default linear init."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.fc.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet20(
    *, num_classes: int = 10, in_channels: int = 3, width: int = 16, shortcut: Shortcut = "A"
) -> CifarResNet:
    """ResNet-20 (0.27M parameters at width 16); arguments as in :class:`CifarResNet`."""
    return CifarResNet(20, num_classes, in_channels, width, shortcut)


def resnet32(
    *, num_classes: int = 10, in_channels: int = 3, width: int = 16, shortcut: Shortcut = "A"
) -> CifarResNet:
    """ResNet-32 (0.46M parameters at width 16); arguments as in :class:`CifarResNet`."""
    return CifarResNet(32, num_classes, in_channels, width, shortcut)


def resnet56(
    *, num_classes: int = 10, in_channels: int = 3, width: int = 16, shortcut: Shortcut = "A"
) -> CifarResNet:
    """ResNet-56 (0.85M parameters at width 16); arguments as in :class:`CifarResNet`."""
    return CifarResNet(56, num_classes, in_channels, width, shortcut)
