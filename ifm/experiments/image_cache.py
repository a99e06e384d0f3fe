"""The cache of ``--synthetic_bn N``'s images: the images synthesised from a checkpoint's BN statistics
(:mod:`ifm.synthesis`) are made once per checkpoint and count, and kept beside the results
(``synthetic_images/``), so that sweeps and frontiers reuse them."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from ..progress import StepBar
from ..synthesis import SyntheticImages, synthesize_images
from .io import atomic_write

Tensor = torch.Tensor


def synthetic_images_path(results: str | Path, digest: str, n: int, steps: int) -> Path:
    """Where the ``n`` images synthesised in ``steps`` steps for the checkpoint with ``digest`` are kept, beside
    ``results``."""
    return Path(results).parent / "synthetic_images" / f"{digest[:16]}_n{n}_it{steps}.pt"


def synthetic_calibration(model: torch.nn.Module, input_size: Sequence[int], digest: str, n: int,
                          results: str | Path, device: torch.device, steps: int, progress: bool = False
                          ) -> tuple[SyntheticImages, bool]:
    """The ``n`` calibration images of the original ``model``, synthesised in ``steps`` steps (read from the cache
    beside ``results``, or made and written there atomically); and whether they came from the cache."""
    path = synthetic_images_path(results, digest, n, steps)
    if path.is_file():
        return SyntheticImages(**torch.load(path, map_location="cpu")), True
    bar = StepBar(f"synthesising {n} BN calibration images")
    try:
        made = synthesize_images(model.to(device), tuple(input_size), n, iterations=steps,
                                 device=device, progress=bar if progress else None)
    finally:
        bar.close()
    made.images = made.images.cpu()
    atomic_write(path, lambda tmp: torch.save(asdict(made), tmp))
    return made, False
