"""Permuting the channels of groups: outputs are unchanged when the groups are right.

Used to check channel-group descriptions and for the paper's Fig. 2(b) (interpolating between
θ and π(θ), where π swaps functionally equivalent features).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .groups import ChannelGroup, join_segments, split_segments

Tensor = torch.Tensor


def select_channels(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                    indices: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep, in that order, the channels ``indices[group name]`` of every member of each group.

    A permutation of all channels reorders a group; a subset prunes it. Selected tensors are new;
    tensors outside the groups are shared with ``state_dict``."""
    out = split_segments(state_dict, groups)
    for group in groups:
        keep = indices.get(group.name)
        if keep is None:
            continue
        for member in group.members:
            w = out[member.key]
            if member.axis == 0:
                out[member.key] = w.reshape(group.width, -1)[keep].reshape(len(keep), *w.shape[1:])
            else:
                out[member.key] = w.reshape(w.shape[0], group.width, -1)[:, keep].reshape(
                    w.shape[0], member.block * len(keep), *w.shape[2:])
    return join_segments(out, state_dict)


def permute_channels(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                     perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Apply ``perms[group name]`` (new channel k = old channel perm[k]) to every member of each group."""
    return select_channels(state_dict, groups, perms)
