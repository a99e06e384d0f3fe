"""Distillation of a merged network from its original on images without labels (beyond the paper; ``--distill``).

The original network is a free teacher: the merged (student) network is trained to match its softened outputs
(KL divergence at temperature T, scaled by T², Hinton et al. 2015) on images synthesised from the original's BN
statistics (:mod:`ifm.synthesis`; data-free, as DeepInversion distils) or on real images, with random crops
(reflect padding 4) and flips, SGD with Nesterov momentum and a cosine schedule, seeded. The student's BatchNorms
stay in eval mode: their statistics (re-estimated before, :func:`ifm.pipeline.reestimate_statistics`) are kept,
and a merge that keeps the function has zero loss and is left unchanged. Gradients are clipped to norm
:data:`CLIP`.

``mix`` mixes each augmented image with another of its batch before both networks see it: ``"cutmix"`` (the
default, :data:`DEFAULT_MIX`) pastes a box of the other (area drawn uniformly), ``"mixup"`` blends the two
(weight drawn uniformly in [0, 1]), ``"none"`` leaves the images alone. The teacher labels whatever it is shown,
so mixed images need no label mixing: they are new inputs for free, a cheap stand-in for synthesising more images.
Cutmix lifted all six settings measured (+0.47 to +1.79 points; mixup less; ``measured/distill_*``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

#: settings (records name the steps and images; changing these changes results)
LEARNING_RATE = 0.01
MOMENTUM = 0.9
BATCH = 64
TEMPERATURE = 4.0
CLIP = 1.0  # largest gradient norm: BN in eval mode does not normalise the gradients, a few steps could diverge

Mix = Literal["none", "mixup", "cutmix"]  # how each image is mixed with another of its batch (``mixed``)
MIXES: tuple[str, ...] = get_args(Mix)
DEFAULT_MIX: Mix = "cutmix"  # chosen by the study in measured/distill_vgg11 and measured/distill_resnet18


@dataclass
class Distillation:
    """How a distillation went: steps, images, the loss over the first and the last tenth of the steps."""

    steps: int
    images: int
    start_loss: float
    final_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list, repr=False)  # per step


def augmented(batch: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crops of ``batch`` (reflect padding ``pad``) and horizontal flips, one draw per image."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def mixed(batch: Tensor, generator: torch.Generator, mix: Mix) -> Tensor:
    """``batch`` with each image mixed with another of the batch (a random permutation): ``"mixup"`` blends them
    with a weight drawn uniformly in [0, 1] per image, ``"cutmix"`` pastes a box of the other whose share of the
    area is drawn uniformly (clipped at the border); ``"none"`` returns ``batch``."""
    if mix == "none" or len(batch) < 2:
        return batch
    n, _, h, w = batch.shape
    other = batch[torch.randperm(n, generator=generator)]
    share = torch.rand(n, generator=generator)
    if mix == "mixup":
        weight = share.view(n, 1, 1, 1).to(batch.dtype)
        return weight * batch + (1 - weight) * other
    out = batch.clone()
    centre = torch.rand(n, 2, generator=generator)
    for k in range(n):
        bh, bw = int(h * share[k].sqrt()), int(w * share[k].sqrt())
        y = int(centre[k, 0] * h) - bh // 2
        x = int(centre[k, 1] * w) - bw // 2
        y0, y1, x0, x1 = max(y, 0), min(y + bh, h), max(x, 0), min(x + bw, w)
        out[k, :, y0:y1, x0:x1] = other[k, :, y0:y1, x0:x1]
    return out


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """KL(teacher ‖ student) of the outputs softened at ``temperature``, times its square (batch mean)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature,
                    dim=1), reduction="batchmean", log_target=True) * temperature ** 2


def distill_model(student: nn.Module, teacher: nn.Module, images: Tensor, steps: int, seed: int = 0,
                  lr: float = LEARNING_RATE, batch_size: int = BATCH, temperature: float = TEMPERATURE,
                  augment: bool = True, mix: Mix = DEFAULT_MIX, device: torch.device | str = "cpu",
                  progress: Callable[[int, int, float], None] | None = None) -> Distillation:
    """Train ``student`` in place for ``steps`` steps to match ``teacher`` on ``images`` (``(n, C, H, W)``, the
    networks' input space), batches of ``batch_size`` drawn at random (seeded), augmented and ``mix``-ed
    (:func:`mixed`); both networks' BN in eval mode, the teacher unchanged. ``progress(step, total, loss)`` after
    every step."""
    if steps < 0:
        raise ValueError(f"distill steps must be 0 or more, got {steps}")
    if steps and len(images) == 0:
        raise ValueError("distillation needs images: synthesised ones (synthetic_bn or distill_images) or real ones")
    if mix not in MIXES:
        raise ValueError(f"distill_mix must be one of {', '.join(MIXES)}; got {mix!r}")
    generator = torch.Generator().manual_seed(seed)
    teacher_mode, student_mode = teacher.training, student.training
    teacher.to(device).eval()
    student.to(device).eval()  # (BN statistics kept: only weights learn)
    requires = [p.requires_grad for p in teacher.parameters()]
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    losses, start = [], time.perf_counter()
    try:
        for step in range(steps):
            pick = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=generator)
            batch = images[pick]
            if batch.dim() == 4:
                batch = mixed(augmented(batch, generator) if augment else batch, generator, mix)
            batch = batch.to(device)
            with torch.no_grad():
                target = teacher(batch)
            loss = distillation_loss(student(batch), target, temperature)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step + 1, steps, losses[-1])
    finally:
        for p, r in zip(teacher.parameters(), requires):
            p.requires_grad_(r)
        teacher.train(teacher_mode)
        student.train(student_mode)
    tenth = max(1, steps // 10)
    mean = (lambda xs: sum(xs) / len(xs) if xs else 0.0)
    return Distillation(steps, len(images), mean(losses[:tenth]), mean(losses[-tenth:]),
                        time.perf_counter() - start, losses)
