"""Data-free calibration images (beyond the paper; ``--synthetic_bn N``).

Inputs are optimised, from Gaussian noise, until every BatchNorm layer of the *original* network sees a batch
whose per-channel mean and standard deviation equal its stored running statistics (the BN loss of ZeroQ, Cai et
al. 2020, and DeepInversion, Yin et al. 2020). Re-estimating a merged network's BN statistics on these images
(:func:`ifm.pipeline.reestimate_statistics`) then needs no data: only the original weights and their BN statistics.

Why it helps where the closed-form repair (:mod:`ifm.correction`) stops: that repair sets each merged BN from
its members' statistics in the *original* network, so errors in one layer's variance change the inputs of the
next and compound with depth. Recalibrating on inputs that reproduce the original statistics measures the
merged network's own statistics, layer after layer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .batchnorm import batch_norm_layers

Tensor = torch.Tensor

#: optimisation settings, fixed (records name the image count; changing these changes results)
ITERATIONS = 500
LEARNING_RATE = 0.1
CHUNK = 64  # images optimised together: each chunk's batch statistics are matched


@dataclass
class SyntheticImages:
    """Images synthesised from a network's BN statistics, and how well they match them."""

    images: Tensor  # (n, *input_size), in the network's input space (after any normalisation)
    start_loss: float  # the BN-statistics loss of the noise they started from (last chunk)
    final_loss: float  # and at the end
    seconds: float
    iterations: int = ITERATIONS
    losses: list[float] = field(default_factory=list)  # per chunk, at the end


def statistics_loss(observed: list[tuple[nn.modules.batchnorm._BatchNorm, Tensor]]) -> Tensor:
    """Σ over BN layers of ‖batch mean − running mean‖ + ‖batch std − running std‖ (std with the layer's
    eps), the batch statistics taken per channel over every other axis of the BN's input."""
    total = 0.0
    for bn, x in observed:
        dims = [d for d in range(x.ndim) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        total = total + (mean - bn.running_mean).norm() \
            + ((var + bn.eps).sqrt() - (bn.running_var + bn.eps).sqrt()).norm()
    return total


def synthesize_images(model: nn.Module, input_size: tuple[int, ...], n: int, seed: int = 0,
                      iterations: int = ITERATIONS, lr: float = LEARNING_RATE, device: torch.device | str = "cpu",
                      progress: Callable[[int, int, float], None] | None = None, chunk: int = CHUNK
                      ) -> SyntheticImages:
    """``n`` inputs of shape ``input_size`` whose BN statistics in ``model`` (kept in eval mode, unchanged) match
    the stored ones: Adam on the inputs, ``lr`` decayed to 0 by a cosine over ``iterations`` steps, in chunks of
    ``chunk`` images (each chunk's batch statistics matched). ``progress(step, total, loss)`` is called after
    every step."""
    if n <= 0:
        raise ValueError(f"the number of synthetic images must be positive, got {n}")
    norms = batch_norm_layers(model)
    if not norms:
        raise ValueError("synthetic calibration images need BatchNorm layers with running statistics; "
                         "this network has none")
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    observed: list[tuple[nn.Module, Tensor]] = []
    hooks = [bn.register_forward_pre_hook(lambda mod, inp: observed.append((mod, inp[0]))) for bn in norms]
    generator = torch.Generator().manual_seed(seed)
    chunks, losses, start = [], [], time.perf_counter()
    sizes = [min(chunk, n - k) for k in range(0, n, chunk)]
    try:
        for index, size in enumerate(sizes):
            x = torch.randn(size, *input_size, generator=generator).to(device).requires_grad_(True)
            optimiser = torch.optim.Adam([x], lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, iterations)
            for step in range(iterations):
                observed.clear()
                optimiser.zero_grad()
                model(x)
                loss = statistics_loss(observed)
                if step == 0:
                    first = loss.item()
                loss.backward()
                optimiser.step()
                schedule.step()
                if progress is not None:
                    progress(index * iterations + step + 1, len(sizes) * iterations, loss.item())
            with torch.no_grad():
                observed.clear()
                model(x)
                losses.append(statistics_loss(observed).item())
            chunks.append(x.detach())
    finally:
        for h in hooks:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return SyntheticImages(torch.cat(chunks), first, losses[-1], time.perf_counter() - start, iterations, losses)
