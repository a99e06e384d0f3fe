"""Loading what a run merges: a checkpoint (or torchvision weights) checked against its architecture, with the
architecture's traced graph and the merge rule the run uses."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import data as datasets
from .data import CIFAR10_MEAN, CIFAR10_STD
from ..architectures import ARCHITECTURES, Architecture, get_architecture, model_for_state_dict
from ..discovery import channel_groups, check_groups
from ..errors import IFMError
from .io import file_digest, load_state_dict_file
from ..pipeline import resolve_rule
from .run import RunSpec
from ..trace import TracedGraph


@dataclass
class LoadedModel:
    arch: Architecture
    state_dict: dict[str, torch.Tensor]
    checkpoint: str  # path or torchvision weights name
    digest: str  # identifies the weights for caches
    normalize: tuple | None  # (mean, std) for CIFAR, if the checkpoint was trained normalised
    model: nn.Module  # the original model with these weights
    merge_rule: str = "official"  # the run's rule ("auto" resolved)
    rule_reason: str = ""  # why "auto" chose it
    graph: TracedGraph | None = None  # the architecture's traced graph (its channel spaces), traced once


def _torchvision_weights(arch: str, weights: str) -> dict[str, torch.Tensor]:
    import torchvision
    try:
        enum = torchvision.models.get_model_weights(arch)
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        raise IFMError(f"unknown --weights {weights!r} for {arch}") from None
    if not datasets.network_reachable("download.pytorch.org"):
        raise IFMError(f"cannot download {arch} {weights}: no network; pass --model_param with a local .pth copy")
    return chosen.get_state_dict(progress=True)


def _training_normalization(checkpoint: Path) -> tuple | None:
    """(mean, std) if ``train_model.py``'s config next to the checkpoint says data.normalize."""
    import yaml
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        cfg = folder / "config.yml"
        if cfg.is_file():
            try:
                if (yaml.safe_load(cfg.read_text()) or {}).get("data", {}).get("normalize"):
                    return CIFAR10_MEAN, CIFAR10_STD
            except yaml.YAMLError:
                return None
            return None
    return None


def load_model(spec: RunSpec, initialise: bool = False) -> LoadedModel:
    """Read the checkpoint (or torchvision weights) and check it fits the architecture. ``initialise``: without
    either, use the model's own initialisation (enough to trace and list its groups)."""
    arch = get_architecture(spec.arch, spec.input_size)
    if initialise and not spec.weights and spec.model_param is None:
        state_dict = arch.build(10 if arch.dataset == "cifar10" else 1000).state_dict()
        checkpoint, digest, normalize = "initialisation", "init", None
    elif spec.weights:
        if spec.model_param:
            raise IFMError("pass either --model_param or --weights, not both")
        state_dict = _torchvision_weights(arch.name, spec.weights)
        checkpoint, digest, normalize = f"torchvision:{arch.name}.{spec.weights}", f"tv:{arch.name}:{spec.weights}", None
    else:
        if spec.model_param is None:
            hint = " or --weights IMAGENET1K_V1" if arch.dataset == "imagenet" else ""
            raise IFMError(f"no checkpoint given: pass --model_param PATH{hint}")
        state_dict = load_state_dict_file(spec.model_param)
        checkpoint, digest = str(spec.model_param), file_digest(spec.model_param)
        normalize = _training_normalization(Path(spec.model_param)) if arch.dataset == "cifar10" else None
    model = model_for_state_dict(arch, state_dict)  # raises IFMError naming the keys that do not fit
    graph = arch.trace(state_dict)
    rule, reason = resolve_rule(graph, spec.merge_rule, "kmeans" if spec.method == "kmeans" else "ifm")
    if spec.arch not in ARCHITECTURES:  # traced groups of a model nobody described: checked once
        check_groups(arch, state_dict, channel_groups(arch, state_dict, spec.stages, rule=rule, graph=graph))
    return LoadedModel(arch, state_dict, checkpoint, digest, normalize, model, rule, reason, graph)
