"""CIFAR-10 training from a :class:`~ifm.experiments.config.Config`.

The dataset lives on the device as a uint8 tensor and is augmented there (random crop with zero
padding 4, horizontal flip), so a GPU is never starved by a data loader. Each epoch draws its
permutation and augmentation from a generator seeded by ``(seed, epoch)``, so a resumed run repeats
an uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
from collections import Counter
import time
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
import yaml

import models

from . import data as datasets
from .config import Config
from ..errors import IFMError
from ..layout import standard_layout
from .evaluate import Normalization, as_inputs, evaluate, normalization, tensor_batches
from .io import append_jsonl, atomic_write, read_jsonl, write_json
from .plots import pyplot, save_figure
from .data import CIFAR10_MEAN, CIFAR10_STD
from ..device import pick_device

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


def augment_epoch(images: torch.Tensor, order: torch.Tensor, ops: list[str], generator: torch.Generator,
                  chunk: int = 8192) -> torch.Tensor:
    """The whole epoch's training images, in ``order`` and augmented, as one uint8 tensor on their device
    (chunked to bound the temporary index tensors); a step then only slices it."""
    return torch.cat([augment(images[order[k:k + chunk]], ops, generator) for k in range(0, len(order), chunk)])


def training_inputs(images: torch.Tensor, norm: Normalization | None, channels_last: bool) -> torch.Tensor:
    """Augmented uint8 images to the model's float inputs."""
    x = as_inputs(images, norm)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class TrainStep:
    """One SGD step on a uint8 batch, with its loss and correct predictions summed on the device (no host
    synchronisation per step).

    ``amp`` autocasts to ``amp_dtype`` (float16 adds a gradient scaler). With ``cuda_graph`` on a CUDA
    device, full batches replay a captured CUDA graph of the whole step (inputs, forward, backward,
    optimizer): one launch instead of hundreds. The learning rate is baked into a capture, so the graph
    is captured again when it changes; batches of another size (the last of an epoch) run eagerly on the
    same tensors. The warm-up steps a capture needs are undone, so training is the same as eager."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 norm: Normalization | None = None, amp: bool = False, amp_dtype: str = "bfloat16",
                 channels_last: bool = False, cuda_graph: bool = False, compile: bool = False,
                 forward: torch.nn.Module | None = None):
        self.model, self.optimizer, self.device, self.norm = model, optimizer, device, norm
        self.amp, self.amp_dtype, self.channels_last = amp, getattr(torch, amp_dtype), channels_last
        self.forward = forward if forward is not None else model  # e.g. a DistributedDataParallel wrapper
        if compile:
            self.forward = torch.compile(self.forward)
        use_scaler = amp and self.amp_dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.use_graph = cuda_graph and device.type == "cuda" and not use_scaler and forward is None
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr: float | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset_counts(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def _step(self, images: torch.Tensor, labels: torch.Tensor, capturing: bool = False) -> None:
        x = training_inputs(images, self.norm, self.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp, cache_enabled=not capturing):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum += loss.detach().float() * labels.shape[0]
        self.correct += (logits.detach().argmax(1) == labels).sum()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.use_graph:
            return self._step(images, labels)
        if self.static is None:
            self.static = (images.clone(), labels.clone())
        if images.shape != self.static[0].shape:
            return self._step(images, labels)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.graph is None or lr != self.graph_lr:
            try:
                self._capture(lr)
            except RuntimeError as exc:  # an op that cannot be captured: train eagerly, say so once
                warnings.warn(f"CUDA graph capture failed ({str(exc).splitlines()[0][:160]}); training eagerly")
                self.use_graph, self.graph = False, None
                return self._step(images, labels)
        self.static[0].copy_(images, non_blocking=True)
        self.static[1].copy_(labels, non_blocking=True)
        self.graph.replay()

    def _training_state(self) -> list[torch.Tensor]:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors + [self.loss_sum, self.correct]

    def _capture(self, lr: float) -> None:
        """Capture the step at this learning rate (warming up first, once, and undoing the warm-up)."""
        self.graph = None
        if self.graph_lr is None:  # first capture: warm up on a side stream (cuDNN plans, optimizer state)
            before = [(t, t.detach().clone()) for t in self._training_state()]
            had_state = {id(p) for p in self.optimizer.state}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            with torch.no_grad():
                for tensor, saved in before:
                    tensor.copy_(saved)
                for param, state in self.optimizer.state.items():  # buffers the warm-up created: zero, which
                    if id(param) not in had_state:                 # SGD treats exactly as absent
                        for value in state.values():
                            if isinstance(value, torch.Tensor):
                                value.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(*self.static, capturing=True)
        self.graph, self.graph_lr = graph, lr


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | None) -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (NCCL on CUDA, else gloo) and pin this
    rank's GPU. Returns whether training is distributed."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def run_directory(config: Config, cfg_name: str, prefix: str, resume: bool, claim: bool = True) -> Path:
    """``output/<date>/<prefix>_<cfg name>/``; with ``resume``, the newest existing one. A new run folder is
    claimed by creating it (``claim``; atomic), so two trainings started with one prefix cannot share it."""
    name = f"{prefix}_{cfg_name}"
    existing = sorted(Path(config.output_dir).glob(f"*/{name}"))
    if resume:
        if not existing:
            raise IFMError(f"nothing to resume: no {config.output_dir}/*/{name}; drop --resume to start")
        return existing[-1]
    run_dir = Path(config.output_dir) / date.today().isoformat() / name
    if claim:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_dir.mkdir()
        except FileExistsError:
            raise IFMError(f"{run_dir} already holds a run; pass --resume to continue it or choose another "
                           "--prefix") from None
    return run_dir


class Trainer:
    """Trains one model under ``run_dir``. ``fit`` runs the remaining epochs; :func:`train_together` runs
    several trainers step by step in turn, each on its own CUDA stream, so their kernels overlap.

    Under ``torchrun`` (an initialised process group) the model is wrapped in DistributedDataParallel and
    each rank takes its share of every global batch (the config's batch size stays the global one);
    rank 0 evaluates and writes."""

    def __init__(self, config: Config, run_dir: Path, progress: bool = True,
                 data: tuple[datasets.TensorImages, datasets.TensorImages] | None = None):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.device = pick_device(config.train.device)
        self.rank, self.world = distributed_rank_and_size()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
            if self.world > 1:
                self.device = torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(config.train.seed)
        train, test = data or (datasets.load_cifar10(config.data.root, split, download=config.data.download,
                                                     progress=progress) for split in ("train", "test"))
        self.train_data = train.subset(datasets.spread_indices(len(train), config.data.subset))
        self.test_data = test.subset(datasets.spread_indices(len(test), config.data.test_samples))
        self.train_images = self.train_data.images.to(self.device)
        self.train_labels = self.train_data.labels.to(self.device)
        self.model = models.create_model(config.model.name, config.model.num_classes, config.model.width)
        self.model.to(self.device)
        t = config.train
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        wrapped = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            wrapped = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, t.milestones, t.gamma)
        self.mean_std = (CIFAR10_MEAN, CIFAR10_STD) if config.data.normalize else (None, None)
        self.norm = normalization(*self.mean_std, self.device)
        self.step = TrainStep(self.model, self.optimizer, self.device, self.norm, t.amp, t.amp_dtype,
                              t.channels_last, t.cuda_graph, t.compile, forward=wrapped)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.epoch = 0  # the next epoch to train
        self.history: list[EpochMetrics] = []

    # ------------------------------------------------------------------ state
    def save_state(self, epoch: int) -> None:
        scheduler = self.scheduler.state_dict()  # its milestones Counter as a dict: loadable with weights_only
        scheduler["milestones"] = dict(scheduler["milestones"])
        state = {"epoch": epoch, "model": standard_layout(self.model.state_dict()),
                 "optimizer": self.optimizer.state_dict(), "scheduler": scheduler,
                 "scaler": self.step.scaler.state_dict()}
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            raise IFMError(f"cannot resume: {path} is missing")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
        except Exception as exc:  # unreadable or truncated file, or weights of another model
            raise IFMError(f"cannot resume from {path}: {str(exc).splitlines()[0][:200]} (a truncated file, or a run "
                           "of another model or width)") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict({**state["scheduler"], "milestones": Counter(state["scheduler"]["milestones"])})
        self.step.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"] + 1

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.train.epochs

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ epochs
    def begin_epoch(self) -> int:
        """Draw and augment the epoch's data (seeded by ``(seed, epoch)``); returns the number of steps."""
        t = self.config.train
        if self.epoch == 0 or not self.run_dir.joinpath("config.yml").exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:
                atomic_write(self.run_dir / "config.yml",
                             lambda tmp: Path(tmp).write_text(yaml.safe_dump(self.config.to_dict())))
        generator = torch.Generator().manual_seed(t.seed * 100_003 + self.epoch)
        if self.stream is not None:  # state loaded or saved on the default stream comes first
            self.stream.wait_stream(torch.cuda.default_stream(self.device))
        with self._on_stream():
            order = torch.randperm(len(self.train_labels), generator=generator).to(self.device)
            self._images = augment_epoch(self.train_images, order, self.config.data.augment, generator)
            self._labels = self.train_labels[order]
            self.model.train()
            self.step.reset_counts()
        self._lr = self.optimizer.param_groups[0]["lr"]
        self._start = time.perf_counter()
        return (len(order) + t.batch_size - 1) // t.batch_size

    def launch(self, k: int) -> None:
        """Queue step ``k`` of the epoch (this rank's share of the k-th global batch)."""
        bs = self.config.train.batch_size
        with self._on_stream():
            part = slice(k * bs + self.rank, (k + 1) * bs, self.world)
            self.step(self._images[part], self._labels[part])

    def end_epoch(self) -> EpochMetrics | None:
        """Finish the epoch: scheduler, metrics, evaluation, checkpoints and logs (rank 0 writes)."""
        t, epoch = self.config.train, self.epoch
        with self._on_stream():
            counts = torch.stack([self.step.loss_sum.double(), self.step.correct.double()])
            if self.world > 1:  # sum the counts; BN statistics of rank 0 for all (as DDP's next forward would)
                import torch.distributed as dist
                dist.all_reduce(counts)
                for buffer in self.model.buffers():
                    dist.broadcast(buffer, 0)
            loss_sum, correct = counts.tolist()
        seen = len(self._labels)
        self._images = self._labels = None
        self.scheduler.step()
        self.epoch += 1
        rate = seen / (time.perf_counter() - self._start)
        if self.rank != 0:
            return None
        with self._on_stream(), torch.autocast(self.device.type, dtype=self.step.amp_dtype, enabled=t.amp):
            test = evaluate(self.model, tensor_batches(self.test_data, 1000, self.device, *self.mean_std),
                            len(self.test_data), self.device, "test", progress=False)
        metrics = EpochMetrics(epoch, self._lr, loss_sum / seen, 100.0 * correct / seen, test.loss, test.accuracy,
                               rate, time.perf_counter() - self._start)
        self.history.append(metrics)
        append_jsonl(self.run_dir / "metrics.jsonl", metrics.__dict__, sync=False)
        if (epoch + 1) % t.save_every == 0 or epoch == t.epochs - 1:
            path = self.run_dir / "params" / f"model_epoch{epoch}.pt"
            # a channels-last model is trained as it is, but saved in the standard layout (portable checkpoints)
            atomic_write(path, lambda tmp: torch.save(standard_layout(self.model.state_dict()), tmp))
            self.save_state(epoch)
        if epoch == t.epochs - 1:
            plot_curves(self.run_dir)
        line = (f"{self.config.model.name} epoch {epoch + 1}/{t.epochs} lr {self._lr:.4g} "
                f"train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.2f} "
                f"test loss {test.loss:.4f} acc {test.accuracy:.2f} ({rate:.0f} img/s, {metrics.seconds:.1f}s)")
        with open(self.run_dir / "train.log", "a") as log:
            log.write(line + "\n")
        if self.progress:
            print(line, flush=True)
        return metrics

    def fit(self) -> list[EpochMetrics]:
        """Train the remaining epochs; writes checkpoints, metrics, a log and a plot."""
        train_together([self], self.progress)
        return self.history


def train_together(trainers: Sequence[Trainer], progress: bool = True) -> None:
    """Train every trainer's remaining epochs, interleaving their steps (one CUDA stream each, so small
    kernels of different models overlap on one GPU). Each model's training is the same as alone."""
    from tqdm.auto import tqdm
    while True:
        active = [t for t in trainers if not t.done]
        if not active:
            return
        steps = [t.begin_epoch() for t in active]
        names = ", ".join(t.config.model.name for t in active)
        desc = f"epoch {min(t.epoch for t in active) + 1}/{max(t.config.train.epochs for t in active)} {names}"
        for k in tqdm(range(max(steps)), desc=desc, unit="step", leave=False, disable=not progress):
            for trainer, n in zip(active, steps):
                if k < n:
                    trainer.launch(k)
        for trainer in active:
            trainer.end_epoch()


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
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend()
    fig.tight_layout()
    return save_figure(fig, Path(run_dir) / "curves.png")


def train_from_config(config: Config, cfg_name: str, prefix: str, resume: bool = False,
                      progress: bool = True) -> tuple[Path, list[EpochMetrics]]:
    """Create or resume the run directory and train; returns it and the new epochs' metrics."""
    rank, world = distributed_rank_and_size()
    run_dir = run_directory(config, cfg_name, prefix, resume, claim=rank == 0)
    if world > 1:  # the other ranks use rank 0's folder once it is claimed
        import torch.distributed as dist
        dist.barrier()
    try:
        trainer = Trainer(config, run_dir, progress)
    except BaseException:  # bad data root, device...: give a folder claimed for nothing back
        if not resume and rank == 0 and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    if resume:
        trainer.load_state()
    history = trainer.fit()
    if trainer.rank == 0:
        write_summary(trainer)
    return run_dir, history


def write_summary(trainer: Trainer) -> dict:
    """``summary.json``: the run's settings that matter for speed and the final epoch's metrics."""
    records = list(read_jsonl(trainer.run_dir / "metrics.jsonl"))
    t = trainer.config.train
    summary = {"run_dir": str(trainer.run_dir), "model": trainer.config.model.name, "epochs": t.epochs,
               "seed": t.seed, "device": str(trainer.device), "world_size": trainer.world,
               "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "CPU",
               "precision": t.amp_dtype if t.amp else "float32", "channels_last": t.channels_last,
               "cuda_graph": trainer.step.use_graph, "compile": t.compile, "torch_version": torch.__version__,
               "cpu_threads": torch.get_num_threads(),
               "train_seconds": sum(r["seconds"] for r in records),
               "final": records[-1] if records else None}
    write_json(trainer.run_dir / "summary.json", summary)
    return summary
