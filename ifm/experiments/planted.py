"""Generated weights with known structure, for benchmarks and Table 2 (no data, no downloads)."""
from __future__ import annotations

import torch

from ..groups import ChannelGroup, split_segments


def copy_channel(state_dict: dict, group: ChannelGroup, src: int, dst: int, noise: float = 0.0,
                 generator: torch.Generator | None = None, split_columns: bool = False) -> None:
    """Make channel ``dst`` of ``group`` a copy of ``src`` in every member (rows and columns).

    ``split_columns``: instead of copying the consumer columns, split the source column equally
    between the two channels (the network then computes the same function as before).
    """
    views = split_segments(state_dict, [group])  # (segments of a concatenation are views: changed in place)
    for key, axis, _ in group.members:
        w = views[key]
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


def near_duplicate_state_dict(arch: str, seed: int = 0, prototypes: float = 0.25, noise: float = 0.02,
                              num_classes: int = 10) -> dict[str, torch.Tensor]:
    """Random-init ``arch`` whose channels, in every group, are noisy copies of a fraction ``prototypes``
    of them (rows and columns): a case in which IFM merges in every group and every iteration."""
    from ..architectures import get_architecture
    from ..discovery import channel_groups
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sd = get_architecture(arch).build(num_classes).state_dict()
    for group in channel_groups(arch, sd):
        keep = max(1, int(group.width * prototypes))
        for dst in range(keep, group.width):
            copy_channel(sd, group, dst % keep, dst, noise=noise, generator=gen)
    return sd
