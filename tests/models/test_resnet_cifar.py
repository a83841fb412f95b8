"""CIFAR ResNet: sizes, shapes, tracing, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoq.models import CifarResNet, resnet20, resnet32, resnet56
from lightning_autoq.models.resnet_cifar import PadShortcut


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("factory", "shortcut", "expected"),
    [
        (resnet20, "A", 269_722),  # the paper's "0.27M"
        (resnet20, "B", 272_474),
        (resnet32, "A", 464_154),  # "0.46M"
        (resnet56, "A", 853_018),  # "0.85M"
    ],
)
def test_parameter_counts(factory, shortcut: str, expected: int) -> None:
    assert n_params(factory(shortcut=shortcut)) == expected


@pytest.mark.parametrize("depth", [8, 20, 32, 44, 56, 110])
def test_layer_count_is_depth(depth: int) -> None:
    model = CifarResNet(depth, width=4)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth  # shortcut A adds no weighted layer


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((2, 1, 28, 28), {"in_channels": 1}),
        ((2, 3, 32, 32), {}),
        ((2, 3, 32, 32), {"shortcut": "B", "num_classes": 100}),
    ],
)
def test_output_shape(shape: tuple[int, ...], kwargs: dict) -> None:
    model = resnet20(width=8, **kwargs)
    assert model(torch.randn(shape)).shape == (shape[0], kwargs.get("num_classes", 10))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_fx_traceable(shortcut: str) -> None:
    model = resnet20(in_channels=1, width=4, shortcut=shortcut).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    convs = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert convs <= targets


def test_relu_modules_are_distinct_and_not_inplace() -> None:
    model = resnet20(width=4)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * 9
    assert len({id(m) for m in relus}) == len(relus)
    assert not any(m.inplace for m in relus)


def test_pad_shortcut_subsamples_and_pads() -> None:
    x = torch.randn(2, 4, 8, 8)
    y = PadShortcut(4, 8, 2)(x)
    assert y.shape == (2, 8, 4, 4)
    torch.testing.assert_close(y[:, 2:6], x[:, :, ::2, ::2])
    assert y[:, :2].abs().sum() == 0 and y[:, 6:].abs().sum() == 0
    assert not list(PadShortcut(4, 8, 2).parameters())


@pytest.mark.parametrize("depth", [0, 2, 19, 21, 100])
def test_bad_depth_raises(depth: int) -> None:
    with pytest.raises(ValueError, match=f"depth={depth}"):
        CifarResNet(depth)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"shortcut='C'.*'A', 'B'"):
        CifarResNet(shortcut="C")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width=0"):
        resnet20(width=0)
