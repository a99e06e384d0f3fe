"""Fixtures: tiny generated datasets and checkpoints (no network, no shared data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import models
from ifm import channel_groups
from ifm.experiments.planted import copy_channel

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (scripts/test.sh): one thread each, and their
    os.environ["OMP_NUM_THREADS"] = "1"     # subprocesses too, so that the workers share the cores, not oversubscribe
    torch.set_num_threads(1)


def make_image_folder(root: Path, splits: dict[str, int], size: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """``root/<split>/<class>/k.png`` with per-class colour tints, so a model can learn something."""
    gen = torch.Generator().manual_seed(seed)
    for split, per_class in splits.items():
        for c in range(classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                img = torch.rand(3, size, size, generator=gen) * 120
                img[c % 3] += 40 + 10 * c
                pixels = img.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cifar"), {"train": 8, "test": 4})


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), {"val": 2}, size=64)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IFM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Small-width CIFAR VGG11 / ResNet18 checkpoints with a few near-duplicate channels."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    out = {}
    for name in ["VGG11", "ResNet18"]:
        sd = models.create_model(name, width=0.125).state_dict()
        gen = torch.Generator().manual_seed(0)
        for group in channel_groups(name, sd):
            for k in range(group.width // 4):
                copy_channel(sd, group, k, group.width - 1 - k, noise=0.02 * (k + 1), generator=gen)
        path = folder / f"{name}.pt"
        torch.save({"net": {f"module.{k}": v for k, v in sd.items()}}, path)  # wrapped + DataParallel prefix
        out[name] = path
    return out
