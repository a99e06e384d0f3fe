"""Iterative Feature Merging (IFM): data-free measurement of layer-wise feature complexity.

The method lives in this package; the experiment harness (runs, sweeps, training, figures, reproduction) in
:mod:`ifm.experiments`. Names are imported on first use, so that training processes (``ifm.experiments.train``)
do not load the compiled merge kernels (Numba).
"""
from __future__ import annotations

from importlib import import_module

_HOMES = {
    "ARCHITECTURES": "architectures", "get_architecture": "architectures", "model_for_state_dict": "architectures",
    "channel_groups": "discovery", "check_groups": "discovery", "describe_groups": "discovery",
    "Distillation": "distill", "distill_model": "distill",
    "IFMError": "errors",
    "ChannelGroup": "groups", "LayerSpaces": "groups", "Member": "groups", "build_groups": "groups",
    "chain_spaces": "groups", "resnet_spaces": "groups",
    "standard_layout": "layout",
    "Compression": "pipeline", "Compressed": "pipeline", "compress": "pipeline",
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
