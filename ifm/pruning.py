"""Channel-pruning baselines at given widths: keep, in every group, the channels with the largest L1 norm
(magnitude pruning) or random ones (``--baseline l1|random``, at the widths IFM found)."""
from __future__ import annotations

from typing import Literal, Mapping, Sequence, get_args

import torch

from .groups import ChannelGroup, channel_slices, split_segments
from .permute import select_channels

Tensor = torch.Tensor
Pruning = Literal["l1", "random"]
PRUNINGS: tuple[str, ...] = get_args(Pruning)


def channel_scores(state_dict: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
    """L1 norm of every channel's producing weights (all axis-0 weights of the group)."""
    score = torch.zeros(group.width, dtype=torch.float64)
    views = split_segments(state_dict, [group])
    for key, axis, _ in group.members:
        w = views[key]
        if axis == 0 and w.ndim >= 2:
            score += channel_slices(w, 0, group.width).abs().sum(dim=1).double()
    return score


def prune_to_widths(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup], widths: Mapping[str, int],
                    method: str = "l1", seed: int = 0) -> dict[str, Tensor]:
    """Keep ``widths[group]`` channels of each group: the largest L1 norms (``l1``) or random ones."""
    if method not in PRUNINGS:
        raise ValueError(f"method must be one of {PRUNINGS}, got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for group in groups:
        k = widths[group.name]
        if method == "l1":
            chosen = channel_scores(state_dict, group).topk(k).indices
        else:
            chosen = torch.randperm(group.width, generator=gen)[:k]
        keep[group.name] = chosen.sort().values
    return select_channels(state_dict, groups, keep)
