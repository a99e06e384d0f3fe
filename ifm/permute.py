"""Permuting the channels of groups: outputs are unchanged when the groups are right.

Used to check channel-group descriptions and for the paper's Fig. 2(b) (interpolating between
θ and π(θ), where π swaps functionally equivalent features).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .groups import ChannelGroup

Tensor = torch.Tensor


def permute_channels(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                     perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Apply ``perms[group name]`` (new channel k = old channel perm[k]) to every member of each group."""
    out = {k: v.clone() for k, v in state_dict.items()}
    for group in groups:
        perm = perms.get(group.name)
        if perm is None:
            continue
        for key, axis in group.members:
            w = out[key]
            if axis == 0:
                out[key] = w.reshape(group.width, -1)[perm].reshape(w.shape)
            else:
                out[key] = w.reshape(w.shape[0], group.width, -1)[:, perm].reshape(w.shape)
    return out
