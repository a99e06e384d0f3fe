"""Small generated models and weights for the tests (no data, no downloads)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

import pytest
import torch
from torch import nn


def script(name: str) -> ModuleType:
    """The entry script ``scripts/<name>.py`` as a module, to call its ``main(argv)`` in the test's process."""
    folder = str(Path(__file__).resolve().parents[1] / "scripts")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def randomize_bn(state_dict: dict, generator: torch.Generator) -> dict:
    """Give BN statistics and biases non-trivial values, so that merging them is tested."""
    for key, value in state_dict.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        elif key.endswith(("running_mean", "bias")) or (value.ndim == 1 and key.endswith("weight")):
            value.copy_(torch.randn(value.shape, generator=generator) * 0.1 + (key.endswith("weight")))
    return state_dict


def plain_cnn(widths=(6, 8, 5), num_classes: int = 4, bias: bool = True) -> nn.Sequential:
    """A BN-free conv chain with a flatten into the classifier (2x2 positions per channel)."""
    layers, c_in = [], 3
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=bias), nn.ReLU()]
        c_in = w
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c_in * 4, 7), nn.ReLU(), nn.Linear(7, num_classes)]
    return nn.Sequential(*layers)


def marked_slow(values: Iterable, is_slow: Callable) -> list:
    """``values`` for ``pytest.mark.parametrize``, each for which ``is_slow(value)`` holds marked slow (the quick loop,
    ``-m "not slow"``, leaves it out)."""
    out = []
    for value in values:
        if is_slow(value):
            out.append(pytest.param(*(value if isinstance(value, tuple) else (value,)), marks=pytest.mark.slow))
        else:
            out.append(value)
    return out


def refused_in_one_line(checkpoint, extra: list[str], message: str, results, capsys) -> None:
    """The CIFAR VGG entry (``--no_eval``) with ``extra`` flags exits 2 with one ``error:`` line holding ``message``
    and writes no results."""
    from ifm.experiments.arguments import cli
    argv = ["--vgg_name", "VGG11", "--model_param", str(checkpoint), "--no_eval", "--results", str(results), *extra]
    assert cli("cifar10", "vgg", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0] and not results.exists(), err
