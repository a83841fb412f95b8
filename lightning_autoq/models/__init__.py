"""Networks for CIFAR-size images and the LightningModule the recipes train."""

from lightning_autoq.models.checkpoint import load_model_weights
from lightning_autoq.models.classifier import ImageClassifier
from lightning_autoq.models.param_groups import weight_decay_groups
from lightning_autoq.models.resnet_cifar import CifarResNet, resnet20, resnet32, resnet56

__all__ = [
    "CifarResNet",
    "ImageClassifier",
    "load_model_weights",
    "resnet20",
    "resnet32",
    "resnet56",
    "weight_decay_groups",
]
