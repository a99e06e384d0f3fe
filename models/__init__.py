"""CIFAR-10 models with the official IFM parameter names, found by name through one registry."""
from __future__ import annotations

from torch import nn

from .resnet import RESNET_SPECS, ResNet
from .vgg import VGG, VGG_CFGS

__all__ = ["VGG", "ResNet", "create_model", "list_models"]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(VGG_CFGS) + sorted(RESNET_SPECS)


def create_model(name: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """Build a CIFAR model by name (``VGG11`` ... ``ResNet50``), optionally width-scaled."""
    if name in VGG_CFGS:
        return VGG(name, num_classes=num_classes, width=width)
    if name in RESNET_SPECS:
        return ResNet(name, num_classes=num_classes, width=width)
    raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
