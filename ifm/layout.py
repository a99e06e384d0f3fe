"""Memory layout of state dicts: every result is the same whatever the layout its inputs came in.

A tensor saved from a ``channels_last`` model (as our bf16 training makes), a transposed or sliced view, or a
tensor on another device holds the same values as its contiguous CPU copy, but code that writes through
``reshape`` gets a silent copy of a non-contiguous tensor instead of a view. The merge keeps its own C-ordered
arrays (:class:`ifm.merge.IterativeMerger`); checkpoints are written and read in the standard layout.
"""
from __future__ import annotations

from typing import Mapping

import torch

Tensor = torch.Tensor


def standard_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` with every tensor detached and contiguous (row-major, as ``torch.empty`` lays it out): a
    channels-last or strided tensor is copied, a contiguous one shared. Device and dtype are kept."""
    return {key: value.detach().contiguous() for key, value in state_dict.items()}


def is_standard_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether every tensor of ``state_dict`` is contiguous (row-major)."""
    return all(value.is_contiguous() for value in state_dict.values())
