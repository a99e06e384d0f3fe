"""Evaluation: accuracy and loss with a progress bar, on tensors or a Dataset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import TensorImages


@dataclass
class EvalResult:
    accuracy: float  # percent
    loss: float  # mean cross-entropy over samples
    samples: int


Normalization = tuple[torch.Tensor, torch.Tensor]


def normalization(mean: Sequence[float] | None, std: Sequence[float] | None,
                  device: torch.device) -> Normalization | None:
    """Per-channel ``(mean, std)`` tensors shaped for ``(N, C, H, W)`` batches, or None."""
    if mean is None:
        return None
    return torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1)


def as_inputs(images: torch.Tensor, norm: Normalization | None = None) -> torch.Tensor:
    """uint8 images to float inputs in [0, 1] (ToTensor), optionally normalised."""
    x = images.float().div_(255)
    return x if norm is None else (x - norm[0]) / norm[1]


def tensor_batches(data: TensorImages, batch_size: int, device: torch.device,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [0, 1] (ToTensor), optionally normalised, on ``device``."""
    norm = normalization(mean, std, device)
    for start in range(0, len(data), batch_size):
        x = as_inputs(data.images[start:start + batch_size].to(device, non_blocking=True), norm)
        yield x, data.labels[start:start + batch_size].to(device, non_blocking=True)


def training_image_batches(data_root: str, n: int, normalize: tuple | None = None, progress: bool = False,
                           batch_size: int = 250) -> tuple[int, Iterator[torch.Tensor]]:
    """``n`` CIFAR-10 training images spread over the split, normalised as a checkpoint was trained (``normalize``:
    its (mean, std), or None): their number and their batches (images only, on the CPU)."""
    from . import data as datasets
    train = datasets.load_cifar10(data_root, "train", progress=progress)
    images = train.subset(datasets.spread_indices(len(train), n))
    mean, std = normalize or (None, None)
    return len(images), (x for x, _ in tensor_batches(images, batch_size, torch.device("cpu"), mean, std))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int | None = None,
             device: torch.device | str = "cpu", desc: str = "eval", progress: bool = True) -> EvalResult:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` in eval mode."""
    from tqdm.auto import tqdm
    model.eval()
    correct, loss_sum, seen = 0, 0.0, 0
    with tqdm(total=total, desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(len(y))
    if seen == 0:
        raise ValueError("evaluation set is empty")
    return EvalResult(100.0 * correct / seen, loss_sum / seen, seen)
