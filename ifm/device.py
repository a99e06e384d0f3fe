"""Device choice, shared by merging, evaluation and training (imports nothing heavy)."""
from __future__ import annotations

import torch

from .errors import IFMError


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_device(name: str | None) -> torch.device:
    """``--device`` or, by default, CUDA when present."""
    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise IFMError(f"--device {name} asked for, but CUDA is not available; use --device cpu")
        try:
            return torch.device(name)
        except RuntimeError:
            raise IFMError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    return default_device()
