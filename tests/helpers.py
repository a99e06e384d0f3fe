"""Small generated models and weights for the tests (no data, no downloads)."""
from __future__ import annotations

import torch
from torch import nn

from ifm import ChannelGroup


def randomize_bn(state_dict: dict, generator: torch.Generator) -> dict:
    """Give BN statistics and biases non-trivial values, so that merging them is tested."""
    for key, value in state_dict.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        elif key.endswith(("running_mean", "bias")) or (value.ndim == 1 and key.endswith("weight")):
            value.copy_(torch.randn(value.shape, generator=generator) * 0.1 + (key.endswith("weight")))
    return state_dict


def copy_channel(state_dict: dict, group: ChannelGroup, src: int, dst: int, noise: float = 0.0,
                 generator: torch.Generator | None = None, split_columns: bool = False) -> None:
    """Make channel ``dst`` of ``group`` a copy of ``src`` in every member (rows and columns).

    ``split_columns``: instead of copying the consumer columns, split the source column equally
    between the two channels (the network then computes the same function as before).
    """
    for key, axis in group.members:
        w = state_dict[key]
        view = w.view(group.width, -1) if axis == 0 else w.view(w.shape[0], group.width, -1)
        src_slice = view[src] if axis == 0 else view[:, src]
        new = src_slice.clone()
        if noise:
            new += noise * torch.randn(new.shape, generator=generator) * src_slice.abs().mean()
        if axis == 1 and split_columns:
            view[:, dst] = 0.5 * src_slice
            view[:, src] = 0.5 * src_slice
        elif axis == 0:
            view[dst] = new
        else:
            view[:, dst] = new


def plain_cnn(widths=(6, 8, 5), num_classes: int = 4, bias: bool = True) -> nn.Sequential:
    """A BN-free conv chain with a flatten into the classifier (2x2 positions per channel)."""
    layers, c_in = [], 3
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=bias), nn.ReLU()]
        c_in = w
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c_in * 4, 7), nn.ReLU(), nn.Linear(7, num_classes)]
    return nn.Sequential(*layers)
