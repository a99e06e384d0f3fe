"""Training configuration: YAML files validated against a typed schema, with ``--set`` overrides.

An unknown key or a value of the wrong type is an :class:`IFMError` naming the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import IFMError


@dataclass
class ModelConfig:
    name: str = "VGG16"  # VGG11/13/16/19, ResNet18/34/50
    width: float = 1.0  # channel multiplier (small variants for quick CPU runs)
    num_classes: int = 10


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    root: str = "data/cifar10"  # cifar-10-batches-py or an ImageFolder tree with train/ and test/
    download: bool = False
    subset: int | None = None  # train on N images spread evenly over the training set
    test_samples: int | None = None  # evaluate each epoch on N test images (None: all)
    # Official code: RandomCrop(32, padding=4) + RandomHorizontalFlip; the paper says flip only.
    augment: list[str] = field(default_factory=lambda: ["crop", "flip"])
    normalize: bool = False  # the official code feeds [0, 1] inputs without normalisation


@dataclass
class TrainConfig:
    epochs: int = 150
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [80, 120])
    gamma: float = 0.1
    seed: int = 0
    device: str | None = None  # default: CUDA when present
    amp: bool = False  # mixed precision: autocast to amp_dtype (float16 adds a gradient scaler)
    amp_dtype: str = "bfloat16"  # bfloat16 or float16
    channels_last: bool = False
    cuda_graph: bool = False  # CUDA only: replay each training step from a captured CUDA graph
    compile: bool = False  # torch.compile the model (fused kernels; compiling takes a while)
    save_every: int = 10  # checkpoint and resumable state every N epochs, and after the last one


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "output"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


AUGMENTATIONS = {"crop", "flip"}


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise an IFMError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except IFMError:
                pass
        raise IFMError(f"config key {key!r}: expected {annotation}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise IFMError(f"config key {key!r}: expected a list, got {value!r}")
        return [_check_type(v, item, key) for v in value]
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation in (str, bool) and isinstance(value, annotation):
        return value
    raise IFMError(f"config key {key!r}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise IFMError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise IFMError(f"config key {prefix}{name!r} must be a section (mapping)")
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, annotation, f"{prefix}{name}")
    return cls(**kwargs)


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``["train.epochs=1", "data.subset=512"]`` -> nested dict (values parsed as YAML)."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise IFMError(f"--set expects key=value, got {pair!r} (e.g. --set train.epochs=1)")
        key, raw = pair.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return nested


def _deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def check_values(config: Config) -> None:
    """Values of the right type but outside their range are errors naming the key (before any training)."""
    import models
    m, d, t = config.model, config.data, config.train
    if m.name not in models.list_models():
        raise IFMError(f"config key 'model.name': unknown model {m.name!r}; choose one of {models.list_models()}")
    checks = [("model.width", m.width > 0, "positive"), ("model.num_classes", m.num_classes > 0, "positive"),
              ("train.epochs", t.epochs > 0, "positive"), ("train.batch_size", t.batch_size > 0, "positive"),
              ("train.lr", t.lr > 0, "positive"), ("train.momentum", 0 <= t.momentum < 1, "in [0, 1)"),
              ("train.weight_decay", t.weight_decay >= 0, "0 or more"), ("train.gamma", t.gamma > 0, "positive"),
              ("train.save_every", t.save_every > 0, "positive"),
              ("data.subset", d.subset is None or d.subset > 0, "positive or null"),
              ("data.test_samples", d.test_samples is None or d.test_samples > 0, "positive or null")]
    for key, ok, expected in checks:
        if not ok:
            value = {"model": m, "data": d, "train": t}[key.split(".")[0]].__dict__[key.split(".")[1]]
            raise IFMError(f"config key {key!r} must be {expected}, got {value!r}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's values; a top-level ``base: other.yml`` (relative to the file) is read first and
    overridden by the file's own values, so that configs differing in a few keys share one recipe."""
    if not path.is_file():
        raise IFMError(f"config not found: {path} (see cfg/ for examples)")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise IFMError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise IFMError(f"{path} is not UTF-8 text; save the config as UTF-8 YAML") from None
    if not isinstance(values, dict):
        raise IFMError(f"{path} must hold a mapping of config sections")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise IFMError(f"{path}: 'base' must name another YAML file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise IFMError(f"{path}: 'base: {base}' makes a cycle of configs")
    return _deep_update(_read_yaml(base_path, (*seen, path.resolve())), values)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a training config."""
    values = _read_yaml(Path(path)) if path is not None else {}
    config = _build(Config, _deep_update(values, parse_overrides(overrides)), "")
    bad = sorted(set(config.data.augment) - AUGMENTATIONS)
    if bad:
        raise IFMError(f"config key 'data.augment': unknown augmentation {bad[0]!r}; use {sorted(AUGMENTATIONS)}")
    check_values(config)
    if config.train.amp_dtype not in ("bfloat16", "float16"):
        raise IFMError(f"config key 'train.amp_dtype': use bfloat16 or float16, got {config.train.amp_dtype!r}")
    if config.data.dataset != "cifar10":
        raise IFMError(f"config key 'data.dataset': only cifar10 is supported, got {config.data.dataset!r}")
    return config


#: keys that may change when a run is resumed (everything else must stay as the run was started)
SAFE_ON_RESUME = ("train.epochs", "train.save_every", "train.device", "data.root", "data.download", "output_dir")


def _flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_config(saved: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a run was started with (its ``config.yml``), with the overrides that are safe on resume
    (more epochs, another data root or device); any other override must repeat the saved value."""
    started = _flatten(load_config(saved).to_dict())
    config = load_config(saved, overrides)
    for key, value in _flatten(config.to_dict()).items():
        if value != started[key] and key not in SAFE_ON_RESUME:
            raise IFMError(f"--set {key}={value} cannot change on --resume: the run was started with "
                           f"{key}={started[key]!r} (only {', '.join(SAFE_ON_RESUME)} may change)")
    return config
