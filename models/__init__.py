"""CIFAR-10 models with the official IFM parameter names, found by name through one registry."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from .resnet import RESNET_SPECS, ResNet, resnet_channels_from_state_dict
from .vgg import VGG, VGG_CFGS, vgg_widths_from_state_dict

__all__ = ["VGG", "ResNet", "create_model", "list_models", "create_model_for_state_dict"]


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


_WIDTH_READERS: dict[str, Callable[[str, Mapping[str, torch.Tensor], int], nn.Module]] = {
    "vgg": lambda n, sd, c: VGG(n, num_classes=c, widths=vgg_widths_from_state_dict(n, sd)),
    "resnet": lambda n, sd, c: ResNet(n, num_classes=c, channels=resnet_channels_from_state_dict(sd)),
}


def create_model_for_state_dict(name: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build ``name`` with the per-layer widths and class count stored in ``state_dict``."""
    family = "vgg" if name in VGG_CFGS else "resnet" if name in RESNET_SPECS else None
    if family is None:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    head = "classifier.weight" if family == "vgg" else "linear.weight"
    if head not in state_dict:
        raise KeyError(f"checkpoint has no {head!r}, so it is not a CIFAR {name}")
    return _WIDTH_READERS[family](name, state_dict, int(state_dict[head].shape[0]))
