"""CIFAR ResNet18/34/50 with the official parameter names.

3x3 stem without max-pool, ``shortcut`` projections (``shortcut.0`` conv, ``shortcut.1`` BN), a
``linear`` head. ``channels`` maps a conv's name (e.g. ``"layer3.0.conv1"``) to its output width,
so merged checkpoints (narrower layers) load into the same class; ``width`` scales all defaults.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(in_c: int, out_c: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_c, out_c, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(out_c)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_c: int, widths: list[int], stride: int = 1):
        super().__init__()
        mid, out = widths
        self.conv1, self.bn1 = _conv_bn(in_c, mid, 3, stride)
        self.conv2, self.bn2 = _conv_bn(mid, out, 3)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_c != out:
            self.shortcut = nn.Sequential(*_conv_bn(in_c, out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_c: int, widths: list[int], stride: int = 1):
        super().__init__()
        mid1, mid2, out = widths
        self.conv1, self.bn1 = _conv_bn(in_c, mid1, 1)
        self.conv2, self.bn2 = _conv_bn(mid1, mid2, 3, stride)
        self.conv3, self.bn3 = _conv_bn(mid2, out, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_c != out:
            self.shortcut = nn.Sequential(*_conv_bn(in_c, out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


RESNET_SPECS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "ResNet18": (BasicBlock, [2, 2, 2, 2]),
    "ResNet34": (BasicBlock, [3, 4, 6, 3]),
    "ResNet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNet(nn.Module):
    """CIFAR ResNet; ``channels`` overrides output widths per conv name (see module docstring)."""

    def __init__(self, resnet_name: str = "ResNet18", num_classes: int = 10, width: float = 1.0,
                 channels: Mapping[str, int] | None = None):
        super().__init__()
        if resnet_name not in RESNET_SPECS:
            raise ValueError(f"unknown ResNet {resnet_name!r}; choose one of {sorted(RESNET_SPECS)}")
        block, num_blocks = RESNET_SPECS[resnet_name]
        channels = dict(channels or {})

        def w(name: str, default: int) -> int:
            return int(channels.get(name, max(1, int(round(default * width)))))

        self.conv1, self.bn1 = _conv_bn(3, w("conv1", 64), 3)
        in_c = self.conv1.out_channels
        n_convs = 2 if block is BasicBlock else 3
        for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], num_blocks), start=1):
            layer = []
            for b in range(blocks):
                prefix = f"layer{stage}.{b}"
                defaults = [planes] * (n_convs - 1) + [planes * block.expansion]
                widths = [w(f"{prefix}.conv{k + 1}", d) for k, d in enumerate(defaults)]
                stride = 2 if (b == 0 and stage > 1) else 1
                layer.append(block(in_c, widths, stride))
                in_c = widths[-1]
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.linear = nn.Linear(in_c, num_classes)
        self.resnet_name = resnet_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))
