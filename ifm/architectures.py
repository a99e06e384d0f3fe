"""Architecture registry: one small description per architecture (how to build it, its input size, how
its traced channel groups are named and, for ResNets, which stages are kept). The channel spaces come from the
model's graph (:mod:`ifm.trace`), the same for every architecture; :mod:`ifm.discovery` turns them into groups."""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

import models

from .errors import IFMError
from .groups import RESNET_OFFICIAL_STAGES, LayerSpaces
from .slim import slim_model
from .trace import TracedGraph, trace_spaces, traced_layer_spaces

Tensor = torch.Tensor


def first_producer(producers: Sequence[str]) -> str:
    """A traced group's default name: its first producing layer."""
    return producers[0]


def vgg_group_name(producers: Sequence[str]) -> str:
    """The official VGG names: ``perm_<layer>`` after the conv/linear that opens the group."""
    return f"perm_{producers[0]}"


def resnet_group_name(producers: Sequence[str]) -> str:
    """The official ResNet names: ``layer<s>.<b>.relu<k>`` after the first block conv producing the group
    (a residual stream is named after its first block's last conv)."""
    for prefix in producers:
        match = re.fullmatch(r"(layer\d\.\d+)\.conv(\d)", prefix)
        if match:
            return f"{match[1]}.relu{match[2]}"
    return producers[0]


def resnet_stage(producers: Sequence[str]) -> int:
    """The stage of a ResNet group: the first stage among its producers (the stem counts as stage 1)."""
    return min(int(p[5]) if re.match(r"layer\d\.", p) else 1 for p in producers)


@dataclass(frozen=True)
class Architecture:
    """How to build a model, the input it takes, and how its traced channel groups are named (and, for
    ResNets, which stages are merged)."""

    name: str
    dataset: str
    input_size: tuple[int, int, int]
    build: Callable[[int], nn.Module]
    is_resnet: bool = False
    group_name: Callable[[Sequence[str]], str] = first_producer

    def trace(self, state_dict: Mapping[str, Tensor]) -> TracedGraph:
        """The graph of this architecture, recorded on a model built on the meta device (no weights)."""
        try:
            with torch.device("meta"):
                model = self.build(num_classes_of(state_dict))
        except IFMError:
            raise
        except Exception:  # a model that cannot be built on the meta device
            model = self.build(num_classes_of(state_dict))
        return trace_spaces(model, self.input_size)

    def spaces(self, state_dict: Mapping[str, Tensor], stages: Iterable[int] | None = None,
               graph: TracedGraph | None = None, rule: str = "official") -> dict[str, LayerSpaces]:
        """The space map of this architecture for merge ``rule`` (from ``graph``, or traced now)."""
        graph = graph or self.trace(state_dict)
        keep = None
        if self.is_resnet:
            keep = lambda producers: self.left_out(producers, stages) is None  # noqa: E731
        return traced_layer_spaces(graph, self.group_name, keep, rule)

    def left_out(self, producers: Sequence[str], stages: Iterable[int] | None = None) -> str | None:
        """Why a mergeable space produced by ``producers`` is not merged with this stage choice (None: it is)."""
        if not self.is_resnet:
            return None
        chosen = sorted(RESNET_OFFICIAL_STAGES if stages is None else set(stages))
        stage = resnet_stage(producers)
        if stage in chosen:
            return None
        default = " (the official ResNet merge)" if stages is None else ""
        return (f"stage {stage}, not among the merged stages {' '.join(map(str, chosen))}{default}; "
                "--stages 1 2 3 4 merges every stage")


def module_architecture(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), name: str | None = None
                        ) -> Architecture:
    """An :class:`Architecture` for a model at hand: it builds copies of ``model`` (class count as the model's)."""
    return Architecture(name or type(model).__name__, "imagenet", tuple(input_size),
                        lambda num_classes: copy.deepcopy(model))


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
        archs[name] = Architecture(name, "cifar10", (3, 32, 32), _cifar(name), resnet,
                                   resnet_group_name if resnet else vgg_group_name)
    for depth in [11, 13, 16, 19]:
        for name in [f"vgg{depth}", f"vgg{depth}_bn"]:
            archs[name] = Architecture(name, "imagenet", (3, 224, 224), _torchvision(name), False, vgg_group_name)
    for name in ["resnet18", "resnet34", "resnet50"]:
        archs[name] = Architecture(name, "imagenet", (3, 224, 224), _torchvision(name), True, resnet_group_name)
    return archs


ARCHITECTURES: dict[str, Architecture] = _registry()


def get_architecture(name: str, input_size: Sequence[int] | None = None) -> Architecture:
    """Look an architecture up by name: a registered one (``VGG16``, ``ResNet50``, ``vgg16_bn``, ``resnet50``...,
    with the official group names), any torchvision classification model (``mobilenet_v2``, ``densenet121``...),
    a timm model (``timm/resnet50d``) or ``package.module:callable`` returning an ``nn.Module`` of yours; ``input_size`` (C, H, W) replaces the
    default input (CIFAR 3x32x32, else 3x224x224) for tracing."""
    if name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
    elif name.startswith("timm/"):
        arch = Architecture(name, "imagenet", (3, 224, 224), _timm_builder(name[len("timm/"):]))
    elif ":" in name:
        arch = Architecture(name, "imagenet", (3, 224, 224), _user_builder(name))
    elif name in _torchvision_names():
        arch = Architecture(name, "imagenet", (3, 224, 224), _torchvision(name))
    else:
        raise IFMError(f"unknown architecture {name!r}: use one of {', '.join(ARCHITECTURES)}, a torchvision "
                       "classification model (e.g. mobilenet_v2) or module:callable for a model of yours")
    if input_size is not None:
        if len(input_size) != 3 or min(input_size) <= 0:
            raise IFMError(f"--input_size takes C H W, e.g. 3 224 224; got {list(input_size)}")
        arch = dataclasses.replace(arch, input_size=tuple(int(v) for v in input_size))
    return arch


def _torchvision_names() -> list[str]:
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)


def _timm_builder(model_name: str) -> Callable[[int], nn.Module]:
    """``timm/<name>``: a timm model (random init; load its weights with --model_param)."""
    try:
        import timm
    except ImportError:
        raise IFMError(f"timm/{model_name} needs timm: pip install timm") from None
    if model_name not in timm.list_models():
        raise IFMError(f"timm has no model {model_name!r} (see timm.list_models())")
    return lambda num_classes: timm.create_model(model_name, pretrained=False, num_classes=num_classes)


def _user_builder(spec: str) -> Callable[[int], nn.Module]:
    """``module:callable`` (``num_classes`` is passed when the callable takes it)."""
    import importlib
    import inspect
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise IFMError(f"cannot import {spec}: {exc} (is its folder on PYTHONPATH?)") from None
    try:
        takes_classes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_classes = False

    def build(num_classes: int) -> nn.Module:
        model = factory(num_classes=num_classes) if takes_classes else factory()
        if not isinstance(model, nn.Module):
            raise IFMError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
        return model
    return build


def num_classes_of(state_dict: Mapping[str, Tensor]) -> int:
    """Class count read from the last 2-D weight (the classifier), or from the last conv for a model whose
    classifier is a conv (SqueezeNet)."""
    weights = [v for v in state_dict.values() if v.ndim == 2] or [v for v in state_dict.values() if v.ndim > 2]
    if not weights:
        raise IFMError("the checkpoint has no conv or linear weight; is it a model's state dict?")
    return int(weights[-1].shape[0])


def model_for_state_dict(arch: str | Architecture, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """A model of ``arch`` shaped like ``state_dict`` (original or merged), with its weights."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    return slim_model(arch.build(num_classes_of(state_dict)), state_dict, arch.name)
