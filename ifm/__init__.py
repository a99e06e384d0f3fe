"""Iterative Feature Merging (IFM): data-free measurement of layer-wise feature complexity.

Names are imported on first use, so that ``import ifm.config`` or ``ifm.train`` (training processes) do not
load the compiled merge kernels (Numba).
"""
from __future__ import annotations

from importlib import import_module

_HOMES = {
    "ARCHITECTURES": "archs", "channel_groups": "archs", "get_architecture": "archs", "model_for_state_dict": "archs",
    "IFMError": "errors",
    "ChannelGroup": "groups", "LayerSpaces": "groups", "Member": "groups", "build_groups": "groups",
    "chain_spaces": "groups", "resnet_spaces": "groups",
    "IterativeMerger": "merge", "MergeResult": "merge", "MergeStep": "merge", "check_hyperparameters": "merge",
    "distance_matrices": "merge", "iterative_feature_merging": "merge",
    "count_flops": "metrics", "count_params": "metrics",
    "permute_channels": "permute",
    "slim_model": "slim",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ifm' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
