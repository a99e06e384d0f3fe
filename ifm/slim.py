"""Build a working model of merged widths from the original model and a merged state dict.

Generic: every Conv2d / Linear / BatchNorm whose parameter shapes differ from the state dict is
replaced by a module of the state dict's shapes (same hyper-parameters), then the state dict is
loaded strictly. No per-architecture model classes are needed.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from .errors import IFMError


#: the layers :func:`slim_model` resizes
RESIZABLE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _resized(module: nn.Module, weight: torch.Tensor) -> nn.Module | None:
    """A copy of ``module`` shaped for ``weight``, or None if it already fits or cannot (another kind of layer:
    the strict load then names the mismatch). The copy keeps the module's class and settings (a timm conv with
    'same' padding, a BN with its activation); only its sizes and parameter shapes change."""
    if weight.shape == module.weight.shape or weight.ndim != module.weight.ndim:
        return None
    if not isinstance(module, RESIZABLE):
        return None
    like = {"dtype": module.weight.dtype, "device": module.weight.device}
    out = weight.shape[0]
    new = copy.deepcopy(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups == module.in_channels == module.out_channels and weight.shape[1] == 1
        new.groups = out if depthwise else module.groups  # a depthwise conv keeps one group per channel
        new.in_channels, new.out_channels = weight.shape[1] * new.groups, out
    elif isinstance(module, nn.Linear):
        new.in_features, new.out_features = weight.shape[1], out
    else:
        new.num_features = out
        for name in ("running_mean", "running_var"):
            if getattr(new, name, None) is not None:
                setattr(new, name, torch.zeros(out, **like))
    new.weight = nn.Parameter(torch.empty(weight.shape, **like))
    if getattr(new, "bias", None) is not None:
        new.bias = nn.Parameter(torch.empty(out, **like))
    return new


def slim_model(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "the model") -> nn.Module:
    """Return a copy of ``model`` resized to ``state_dict``'s shapes, with its weights loaded."""
    slim = copy.deepcopy(model)
    for name, module in list(slim.named_modules()):
        key = f"{name}.weight"
        if key not in state_dict or not hasattr(module, "weight") or module.weight is None:
            continue
        replacement = _resized(module, state_dict[key])
        if replacement is None:
            continue
        replacement = replacement.to(module.weight.device, module.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(slim.get_submodule(parent_name) if parent_name else slim, child, replacement)
    load_strict(slim, state_dict, what)
    return slim


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "the model") -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatching keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape mismatch {wrong[:3]}" if wrong else ""]
        raise IFMError(f"checkpoint keys do not fit {what}: " + "; ".join(p for p in parts if p)
                       + " (check the architecture argument)")
    ordered = OrderedDict(state_dict)  # with the modules' version metadata (MNASNet's loading needs it)
    ordered._metadata = getattr(state_dict, "_metadata", own._metadata)  # type: ignore[attr-defined]
    model.load_state_dict(ordered)
