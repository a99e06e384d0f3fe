"""CIFAR VGG with the official parameter names (``features.N.*``, ``classifier.*``).

Layout per conv: ``Conv2d(3x3, pad 1, bias=True)``, ``BatchNorm2d``, ``ReLU``; ``'M'`` is a 2x2
max-pool; an ``AvgPool2d(1, 1)`` (a no-op kept for key compatibility) and one ``Linear`` close it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

VGG_CFGS: dict[str, list] = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "VGG19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def vgg_widths(vgg_name: str, width: float = 1.0) -> list[int]:
    """Default conv widths of ``vgg_name`` scaled by ``width`` (at least one channel each)."""
    return [max(1, int(round(c * width))) for c in VGG_CFGS[vgg_name] if c != "M"]


class VGG(nn.Module):
    """CIFAR VGG. ``widths`` overrides the conv widths (e.g. a merged model's feature complexity)."""

    def __init__(self, vgg_name: str = "VGG16", num_classes: int = 10,
                 widths: Sequence[int] | None = None, width: float = 1.0):
        super().__init__()
        if vgg_name not in VGG_CFGS:
            raise ValueError(f"unknown VGG {vgg_name!r}; choose one of {sorted(VGG_CFGS)}")
        widths = list(widths) if widths is not None else vgg_widths(vgg_name, width)
        n_convs = sum(c != "M" for c in VGG_CFGS[vgg_name])
        if len(widths) != n_convs:
            raise ValueError(f"{vgg_name} has {n_convs} convs, got {len(widths)} widths")
        layers: list[nn.Module] = []
        in_channels, it = 3, iter(widths)
        for c in VGG_CFGS[vgg_name]:
            if c == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = next(it)
            layers += [nn.Conv2d(in_channels, out, kernel_size=3, padding=1),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            in_channels = out
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.vgg_name, self.widths = vgg_name, widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
