"""CIFAR-10 training from a :class:`~ifm.config.Config`.

The dataset lives on the device as a uint8 tensor and is augmented there (random crop with zero
padding 4, horizontal flip), so a GPU is never starved by a data loader. Each epoch draws its
permutation and augmentation from a generator seeded by ``(seed, epoch)``, so a resumed run repeats
an uninterrupted one exactly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import models

from . import data as datasets
from .config import Config
from .errors import IFMError
from .evaluate import Normalization, as_inputs, evaluate, normalization, tensor_batches
from .io import append_jsonl, atomic_write, read_jsonl, write_json
from .plots import pyplot, save_figure
from .selfmerge import CIFAR10_MEAN, CIFAR10_STD, pick_device

STATE_FILE = "state/last.pt"


@dataclass
class EpochMetrics:
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    images_per_second: float
    seconds: float


def augment(images: torch.Tensor, ops: list[str], generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding 4) and/or horizontal flip of a uint8 or float batch, on its device."""
    n, _, h, w = images.shape
    if "crop" in ops:
        padded = F.pad(images, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 9, (n,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if "flip" in ops:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch (autocast when ``amp``: fp16 on CUDA, bf16 on the CPU);
    returns the loss and the logits."""
    amp_dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def training_inputs(images: torch.Tensor, norm: Normalization | None, channels_last: bool) -> torch.Tensor:
    """Augmented uint8 images to the model's float inputs."""
    x = as_inputs(images, norm)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def run_directory(config: Config, cfg_name: str, prefix: str, resume: bool) -> Path:
    """``output/<date>/<prefix>_<cfg name>/``; with ``resume``, the newest existing one."""
    name = f"{prefix}_{cfg_name}"
    existing = sorted(Path(config.output_dir).glob(f"*/{name}"))
    if resume:
        if not existing:
            raise IFMError(f"nothing to resume: no {config.output_dir}/*/{name}; drop --resume to start")
        return existing[-1]
    run_dir = Path(config.output_dir) / date.today().isoformat() / name
    if (run_dir / STATE_FILE).exists():
        raise IFMError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --prefix")
    return run_dir


class Trainer:
    """Trains one model; ``fit`` runs the remaining epochs and writes everything under ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path, progress: bool = True):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.device = pick_device(config.train.device)
        torch.manual_seed(config.train.seed)
        train = datasets.load_cifar10(config.data.root, "train", download=config.data.download)
        test = datasets.load_cifar10(config.data.root, "test", download=config.data.download)
        self.train_data = train.subset(datasets.spread_indices(len(train), config.data.subset))
        self.test_data = test.subset(datasets.spread_indices(len(test), config.data.test_samples))
        self.train_images = self.train_data.images.to(self.device)
        self.train_labels = self.train_data.labels.to(self.device)
        self.model = models.create_model(config.model.name, config.model.num_classes, config.model.width)
        self.model.to(self.device)
        if config.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        t = config.train
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, t.milestones, t.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.amp and self.device.type == "cuda")
        self.start_epoch = 0
        self.mean_std = (CIFAR10_MEAN, CIFAR10_STD) if config.data.normalize else (None, None)
        self.norm = normalization(*self.mean_std, self.device)

    # ------------------------------------------------------------------ state
    def save_state(self, epoch: int) -> None:
        state = {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            raise IFMError(f"cannot resume: {path} is missing")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"] + 1

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One epoch; returns (mean loss, accuracy %, images/s)."""
        from tqdm.auto import tqdm
        t = self.config.train
        generator = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_labels), generator=generator).to(self.device)
        self.model.train()
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(range(0, len(order), t.batch_size), desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch",
                   leave=False, disable=not self.progress)
        for begin in bar:
            idx = order[begin:begin + t.batch_size]
            x = training_inputs(augment(self.train_images[idx], self.config.data.augment, generator), self.norm,
                                t.channels_last)
            y = self.train_labels[idx]
            loss, logits = train_step(self.model, self.optimizer, self.scaler, x, y, t.amp)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", img_s=f"{rate:.0f}")
        bar.close()
        self.scheduler.step()
        return loss_sum / seen, 100.0 * correct / seen, seen / (time.perf_counter() - start)

    def fit(self) -> list[EpochMetrics]:
        """Train the remaining epochs; writes checkpoints, metrics, a log and a plot."""
        t = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.run_dir / "config.yml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(self.config.to_dict())))
        history = []
        for epoch in range(self.start_epoch, t.epochs):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_acc, rate = self.train_epoch(epoch)
            test = evaluate(self.model, tensor_batches(self.test_data, 512, self.device, *self.mean_std),
                            len(self.test_data), self.device, "test", progress=self.progress)
            metrics = EpochMetrics(epoch, lr, train_loss, train_acc, test.loss, test.accuracy, rate,
                                   time.perf_counter() - start)
            history.append(metrics)
            if (epoch + 1) % t.save_every == 0 or epoch == t.epochs - 1:
                path = self.run_dir / "params" / f"model_epoch{epoch}.pt"
                atomic_write(path, lambda tmp: torch.save(self.model.state_dict(), tmp))
            self.save_state(epoch)
            append_jsonl(self.run_dir / "metrics.jsonl", metrics.__dict__)
            line = (f"epoch {epoch + 1}/{t.epochs} lr {lr:.4g} train loss {train_loss:.4f} acc {train_acc:.2f} "
                    f"test loss {test.loss:.4f} acc {test.accuracy:.2f} ({rate:.0f} img/s, {metrics.seconds:.1f}s)")
            with open(self.run_dir / "train.log", "a") as log:
                log.write(line + "\n")
            print(line, flush=True)
            plot_curves(self.run_dir)
        return history


def plot_curves(run_dir: Path) -> Path | None:
    """Loss and accuracy per epoch from ``metrics.jsonl`` into ``curves.png``."""
    records = list(read_jsonl(Path(run_dir) / "metrics.jsonl"))
    if not records:
        return None
    plt = pyplot()
    epochs = [r["epoch"] + 1 for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in records], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_loss.legend()
    fig.tight_layout()
    return save_figure(fig, Path(run_dir) / "curves.png")


def train_from_config(config: Config, cfg_name: str, prefix: str, resume: bool = False,
                      progress: bool = True) -> tuple[Path, list[EpochMetrics]]:
    """Create or resume the run directory and train; returns it and the new epochs' metrics."""
    run_dir = run_directory(config, cfg_name, prefix, resume)
    trainer = Trainer(config, run_dir, progress)
    if resume:
        trainer.load_state()
    history = trainer.fit()
    summary = {"run_dir": str(run_dir), "epochs": config.train.epochs,
               "final": history[-1].__dict__ if history else None}
    write_json(run_dir / "summary.json", summary)
    return run_dir, history
