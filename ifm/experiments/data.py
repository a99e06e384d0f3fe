"""Datasets: CIFAR-10 as uint8 tensors (torchvision pickles or an ImageFolder tree), ImageNet val.

CIFAR-10 is held in memory as ``(N, 3, 32, 32)`` uint8 images plus labels, so evaluation and training
can move it to the device once and augment there. An ImageFolder tree is decoded once and cached.
"""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import IFMError
from .io import atomic_write

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CIFAR_HOST = "www.cs.toronto.edu"


@dataclass
class TensorImages:
    """Images as uint8 ``(N, C, H, W)`` with integer labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""  # identifies the files' content (names, labels, sizes, times), for caches

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[indices], self.labels[indices], self.classes, self.source)


def spread_indices(length: int, n: int | None) -> torch.Tensor:
    """``n`` indices spread evenly over ``length`` items: ``round(k * length / n)``, or all of them."""
    if n is None or n >= length:
        return torch.arange(length)
    if n <= 0:
        raise IFMError(f"the number of images to take must be positive, got {n}")
    return torch.tensor([min(length - 1, round(k * length / n)) for k in range(n)])


def network_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers (used to fail fast, with a clear message, when offline)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cifar_batches_dir(root: Path) -> Path | None:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").exists() and (candidate / "test_batch").exists():
            return candidate
    return None


def _image_folder_dir(root: Path, split: str) -> Path | None:
    folder = root / split
    return folder if folder.is_dir() else None


MISSING_CIFAR = ("no CIFAR-10 found under {root}: pass --data_root pointing at a folder with "
                 "cifar-10-batches-py or an ImageFolder tree with train/ and test/{download_hint}")


def load_cifar10(root: str | os.PathLike, split: str = "test", download: bool = False,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> TensorImages:
    """CIFAR-10 ``split`` ('train' or 'test') from ``root``.

    ``root`` may hold torchvision's ``cifar-10-batches-py`` or an ImageFolder tree (``train/``,
    ``test/``, one folder per class in CIFAR-10 label order). With ``download``, torchvision fetches
    the dataset when it is absent; offline, that fails fast with a message. ``progress``: a bar while
    an ImageFolder tree is decoded (once; then it is cached).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    batches = _cifar_batches_dir(root)
    folder = _image_folder_dir(root, split) if batches is None else None
    if batches is None and folder is None:
        if not download:
            raise IFMError(MISSING_CIFAR.format(root=root, download_hint=", or add --download"))
        if not network_reachable(CIFAR_HOST):
            raise IFMError(MISSING_CIFAR.format(root=root, download_hint=" (download failed: no network)"))
        import torchvision
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        batches = _cifar_batches_dir(root)
    if batches is not None:
        import torchvision
        try:
            data = torchvision.datasets.CIFAR10(str(batches.parent), train=split == "train", download=False)
        except Exception as exc:  # truncated or foreign files under the torchvision names
            raise IFMError(f"cannot read CIFAR-10 from {batches}: {type(exc).__name__} ({exc}); "
                           "replace the folder with a fresh copy (or pass --download after removing it)") from None
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
        stamp = "|".join(f"{p.name}:{_size_and_time(p)}" for p in sorted(batches.iterdir()))
        return TensorImages(images, torch.tensor(data.targets, dtype=torch.long), list(data.classes),
                            hashlib.sha1(stamp.encode()).hexdigest())
    loaded = load_image_folder(folder, cache_dir=cache_dir, progress=progress)
    if len(loaded.classes) != len(CIFAR10_CLASSES):
        raise IFMError(f"{folder} has {len(loaded.classes)} class folders, CIFAR-10 has 10 ("
                       + ", ".join(CIFAR10_CLASSES) + "): a missing or extra folder would shift every label")
    return loaded


def _size_and_time(path: Path) -> str:
    """``size:mtime_ns`` of a file, from one stat call."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _folder_listing(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(f, label) for label, c in enumerate(classes) for f in sorted((folder / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise IFMError(f"no images in {folder} (expected {folder}/<class>/*.jpg)")
    return classes, files


def load_image_folder(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> TensorImages:
    """Decode an ImageFolder tree of equal-sized images into a uint8 tensor (cached on disk)."""
    folder = Path(folder)
    classes, files = _folder_listing(folder)
    # the cache is keyed by every file's class, name, size and modification time: moved, added, removed
    # or rewritten images make a new entry
    listing = "\n".join(f"{label}|{f.relative_to(folder)}|{_size_and_time(f)}" for f, label in files)
    source = hashlib.sha1(listing.encode()).hexdigest()
    cache = Path(cache_dir or os.environ.get("IFM_CACHE", Path.home() / ".cache" / "ifm"))
    cache_file = cache / f"images_{source[:24]}.pt"
    if cache_file.exists():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return TensorImages(cached["images"], cached["labels"], classes, source)
        except Exception:
            pass  # a corrupt cache is rebuilt
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    def decode(path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as img:
                return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        except (OSError, ValueError) as exc:  # not an image, truncated, unknown format
            raise IFMError(f"cannot decode image {path}: {exc}; remove or replace the file") from None

    bar = tqdm(files, desc=f"decoding {folder.name}", unit="img", leave=False, disable=not progress)
    images = [decode(f) for f, _ in bar]
    if len({tuple(i.shape) for i in images}) != 1:
        raise IFMError(f"images in {folder} differ in size; CIFAR-style folders must hold equal-sized images")
    result = TensorImages(torch.stack(images), torch.tensor([label for _, label in files]), classes, source)
    try:
        atomic_write(cache_file, lambda tmp: torch.save({"images": result.images, "labels": result.labels}, tmp))
    except OSError:
        pass  # caching is an optimisation only
    return result


def imagenet_val(root: str | os.PathLike):
    """ImageNet validation set (``root/val/<wnid>/*.JPEG``) with Resize 256 / CenterCrop 224 / Normalize."""
    from torchvision import datasets, transforms
    val = Path(root).expanduser() / "val"
    if not val.is_dir():
        raise IFMError(f"no ImageNet validation set at {val}: pass --data_root pointing at a folder with val/<wnid>/*.JPEG")
    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        dataset = datasets.ImageFolder(str(val), transform)
    except (FileNotFoundError, OSError) as exc:  # no class folder, or class folders without images
        raise IFMError(f"no usable ImageNet validation set at {val}: {exc}") from None
    return dataset
