"""Evaluation: accuracy and loss with a progress bar, on tensors or a Dataset; a run's test split
(:class:`Evaluator`, loaded once, with the original model's accuracy cached beside the results)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data as datasets
from ..errors import IFMError
from .data import TensorImages
from .io import append_jsonl, read_jsonl

if TYPE_CHECKING:  # (training imports this module without the merge's compiled kernels)
    from .loading import LoadedModel
    from .run import RunOptions, RunSpec


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


def _check_eval_samples(spec: RunSpec, available: int) -> None:
    if spec.eval_samples is not None and spec.eval_samples > available:
        raise IFMError(f"--eval_samples {spec.eval_samples} exceeds the {available:,} test images under "
                       f"{spec.data_root}: give at most {available}, or leave it out to use them all")


class Evaluator:
    """Evaluates models on the (possibly subsampled) test split, loading the data once."""

    def __init__(self, loaded: LoadedModel, spec: RunSpec, options: RunOptions, device: torch.device):
        if not spec.evaluates:
            raise ValueError("this run merges only (no data root)")
        self.device, self.spec, self.options, self.loaded = device, spec, options, loaded
        if loaded.arch.dataset == "cifar10":
            full = datasets.load_cifar10(spec.data_root, "test", download=spec.download, progress=options.progress)
            _check_eval_samples(spec, len(full))
            self.data = full.subset(datasets.spread_indices(len(full), spec.eval_samples))
        else:
            full = datasets.imagenet_val(spec.data_root)
            _check_eval_samples(spec, len(full))
            from torch.utils.data import Subset
            self.data = Subset(full, datasets.spread_indices(len(full), spec.eval_samples).tolist())
        from ..architectures import num_classes_of
        outputs = num_classes_of(loaded.state_dict)
        if len(full.classes) != outputs:
            raise IFMError(f"{spec.data_root} has {len(full.classes)} classes but the checkpoint's classifier has "
                           f"{outputs} outputs: labels would not match; check --data_root")
        self.total = len(self.data)

    def batches(self) -> Iterable:
        if isinstance(self.data, datasets.TensorImages):
            mean, std = self.loaded.normalize or (None, None)
            return tensor_batches(self.data, self.options.batch_size, self.device, mean, std)
        from torch.utils.data import DataLoader
        return DataLoader(self.data, batch_size=self.options.batch_size, num_workers=self.options.workers)

    def __call__(self, model: nn.Module, desc: str) -> EvalResult:
        return evaluate(model.to(self.device), self.batches(), self.total, self.device, desc,
                        progress=self.options.progress)

    def train_batches(self, n: int) -> Iterable:
        """N training images spread over the training split (for BN recalibration)."""
        if self.loaded.arch.dataset != "cifar10":
            raise IFMError("--recalibrate_bn is implemented for CIFAR-10 models")
        train = datasets.load_cifar10(self.spec.data_root, "train", download=self.spec.download,
                                      progress=self.options.progress)
        subset = train.subset(datasets.spread_indices(len(train), n))
        mean, std = self.loaded.normalize or (None, None)
        return tensor_batches(subset, self.options.batch_size, self.device, mean, std)

    def baseline(self, model: nn.Module, cache_path: Path) -> EvalResult:
        """The original model's accuracy, cached per checkpoint next to the results."""
        key = {"digest": self.loaded.digest, "data_root": self.spec.record_fields()["data_root"],
               "data": getattr(self.data, "source", ""), "eval_samples": self.total,
               "normalize": bool(self.loaded.normalize)}
        for record in read_jsonl(cache_path):
            if record.get("key") == key:
                return EvalResult(record["accuracy"], record["loss"], record["samples"])
        result = self(model, "eval original")
        append_jsonl(cache_path, {"key": key, "accuracy": result.accuracy, "loss": result.loss,
                                  "samples": result.samples})
        return result
