"""Architecture registry: one small description per architecture (how to build it, its channel
spaces, its input size); everything else is generic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

import models

from .errors import IFMError
from .groups import RESNET_OFFICIAL_STAGES, ChannelGroup, LayerSpaces, build_groups, chain_spaces, resnet_spaces
from .slim import slim_model

Tensor = torch.Tensor


@dataclass(frozen=True)
class Architecture:
    """How to build a model and describe its channel spaces."""

    name: str
    dataset: str
    input_size: tuple[int, int, int]
    build: Callable[[int], nn.Module]
    spaces: Callable[[Mapping[str, Tensor], Iterable[int]], dict[str, LayerSpaces]]
    is_resnet: bool


def _chain(state_dict: Mapping[str, Tensor], stages: Iterable[int]) -> dict[str, LayerSpaces]:
    return chain_spaces(state_dict)


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    return build


def _cifar(name: str) -> Callable[[int], nn.Module]:
    return lambda num_classes: models.create_model(name, num_classes=num_classes)


def _registry() -> dict[str, Architecture]:
    archs: dict[str, Architecture] = {}
    for name in ["VGG11", "VGG13", "VGG16", "VGG19", "ResNet18", "ResNet34", "ResNet50"]:
        resnet = name.startswith("ResNet")
        archs[name] = Architecture(name, "cifar10", (3, 32, 32), _cifar(name),
                                   resnet_spaces if resnet else _chain, resnet)
    for depth in [11, 13, 16, 19]:
        for name in [f"vgg{depth}", f"vgg{depth}_bn"]:
            archs[name] = Architecture(name, "imagenet", (3, 224, 224), _torchvision(name), _chain, False)
    for name in ["resnet18", "resnet34", "resnet50"]:
        archs[name] = Architecture(name, "imagenet", (3, 224, 224), _torchvision(name), resnet_spaces, True)
    return archs


ARCHITECTURES: dict[str, Architecture] = _registry()


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name (``VGG16``, ``ResNet50``, ``vgg16_bn``, ``resnet50``...)."""
    if name not in ARCHITECTURES:
        raise IFMError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def channel_groups(arch: str | Architecture, state_dict: Mapping[str, Tensor],
                   stages: Iterable[int] | None = None) -> list[ChannelGroup]:
    """Channel groups of ``state_dict`` for ``arch`` (ResNets: ``stages``, default the official (3, 4))."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    if stages is not None and not arch.is_resnet:
        raise IFMError(f"--stages applies to ResNets only, not {arch.name}")
    if stages is not None and (not list(stages) or not set(stages) <= {1, 2, 3, 4}):
        raise IFMError(f"ResNet stages are 1, 2, 3 and 4; got {list(stages)} (the official choice is 3 4)")
    return build_groups(state_dict, arch.spaces(state_dict, stages or RESNET_OFFICIAL_STAGES))


def num_classes_of(state_dict: Mapping[str, Tensor]) -> int:
    """Class count read from the last 2-D weight (the classifier)."""
    matrices = [v for v in state_dict.values() if v.ndim == 2]
    if not matrices:
        raise IFMError("the checkpoint has no 2-D weight (no classifier); is it a CIFAR/ImageNet VGG or ResNet?")
    return int(matrices[-1].shape[0])


def model_for_state_dict(arch: str | Architecture, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """A model of ``arch`` shaped like ``state_dict`` (original or merged), with its weights."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    return slim_model(arch.build(num_classes_of(state_dict)), state_dict, arch.name)
