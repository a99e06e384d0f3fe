"""A training followed epoch by epoch: when do the paper's mergeable features appear?

For a training run folder (``train_model.py`` or ``reproduce_cifar10.py``: ``params/model_epoch<k>.pt``, one every
``save_every`` epochs):

* :func:`diagnose_epochs` diagnoses every kept checkpoint (:mod:`.diagnose`: per layer the smallest and median
  normalised Eq. 6 distance, dead BN channels, channels never positive on training images, BN scales) and draws
  them against the epoch;
* :func:`sweep_epochs` sweeps β at chosen epochs with the official merge, BN folded and the data-free repair, and
  tabulates each epoch's curve.

Both resume: a second call diagnoses and sweeps only what is missing.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import IFMError
from .io import append_jsonl, read_jsonl, write_csv
from .plots import pyplot, save_figure

CHECKPOINT = re.compile(r"model_epoch(\d+)\.pt")


@dataclass(frozen=True)
class EpochCheckpoint:
    """A kept checkpoint: its epoch (counted from 1: ``model_epoch0.pt`` is epoch 1) and path."""

    epoch: int
    path: Path


def kept_checkpoints(run_dir: str | Path) -> list[EpochCheckpoint]:
    """The checkpoints of a training run folder, by epoch."""
    folder = Path(run_dir) / "params"
    found = [EpochCheckpoint(int(m[1]) + 1, p) for p in folder.glob("model_epoch*.pt")
             if (m := CHECKPOINT.fullmatch(p.name))]
    if not found:
        raise IFMError(f"no checkpoints (params/model_epoch*.pt) in {run_dir}: give a training run folder")
    return sorted(found, key=lambda c: c.epoch)


def _flat(epoch: int, diagnosis) -> dict:
    row = {"epoch": epoch, **asdict(diagnosis)}
    residues = row.pop("diagonal_residues") or {}
    return {**row, **{f"residue_{k}": v for k, v in residues.items()}}


def diagnose_epochs(arch: str, run_dir: str | Path, out: str | Path, data_root: str | None = None,
                    images: int = 1000, epochs: Sequence[int] | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Diagnose every kept checkpoint (of ``epochs``, default all) not yet in ``out/epochs.jsonl`` (one row per
    epoch and layer, appended); write ``epochs.csv`` and ``epochs.png``; return all rows."""
    from .diagnose import diagnose_checkpoint
    out = Path(out)
    path = out / "epochs.jsonl"
    done = {r["epoch"] for r in read_jsonl(path)}
    for checkpoint in kept_checkpoints(run_dir):
        if checkpoint.epoch in done or (epochs is not None and checkpoint.epoch not in epochs):
            continue
        rows = diagnose_checkpoint(arch, checkpoint.path, data_root, images)
        for row in rows:
            append_jsonl(path, _flat(checkpoint.epoch, row), sync=False)
        last = rows[-1]
        log(f"epoch {checkpoint.epoch}: last layer smallest distance {last.min_distance:.3g}, median "
            f"{last.median_distance:.3g}; dead (BN / never positive) {sum(r.dead_bn for r in rows)} / "
            f"{sum(r.dead_relu or 0 for r in rows)}")
    rows = sorted(read_jsonl(path), key=lambda r: r["epoch"])
    write_csv(out / "epochs.csv", list(rows[0]), [[r.get(k) for k in rows[0]] for r in rows])
    plot_epochs(rows, out / "epochs.png", title=run_title(arch, run_dir))
    return rows


def plot_epochs(rows: Sequence[dict], path: str | Path, title: str = "", milestones: Sequence[int] = (80, 120)
                ) -> Path:
    """Per layer against the epoch: the smallest and the median normalised distance (log scale), and the dead
    channels (BN scale ≈ 0 plus never positive on data); the learning-rate drops marked."""
    plt = pyplot()
    layers = list(dict.fromkeys(r["group"] for r in rows))
    colours = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    floor = 1e-17  # an exact duplicate (distance 0) is drawn at the floor
    for k, layer in enumerate(layers):
        mine = [r for r in rows if r["group"] == layer]
        epochs = [r["epoch"] for r in mine]
        colour = colours(k / max(len(layers) - 1, 1))
        axes[0].semilogy(epochs, [max(r["min_distance"], floor) for r in mine], color=colour, marker=".", label=layer)
        axes[1].semilogy(epochs, [max(r["median_distance"], floor) for r in mine], color=colour, marker=".")
        axes[2].plot(epochs, [r["dead_bn"] + (r["dead_relu"] or 0) for r in mine], color=colour, marker=".")
    for ax, label in zip(axes, ("smallest normalised distance", "median normalised distance",
                                "dead channels (BN ≈ 0 + never positive)")):
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        for m in milestones:
            if rows and m <= max(r["epoch"] for r in rows):
                ax.axvline(m, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=6, ncol=2, title="layer (shallow → deep)", title_fontsize=7)
    fig.suptitle("Mergeable features during training" + (f": {title}" if title else "")
                 + " (dotted: learning-rate drops)")
    fig.tight_layout()
    return save_figure(fig, path)


def run_title(arch: str, run_dir: str | Path) -> str:
    """``arch, <run>`` for a figure: the training's folder (``<run>/checkpoints/<arch>`` names the run above)."""
    path = Path(run_dir)
    if path.name == arch and path.parent.name == "checkpoints":
        path = path.parent.parent
    return f"{arch}, {path.name}"


def sweep_epochs(arch: str, run_dir: str | Path, epochs: Sequence[int], out: str | Path, data_root: str,
                 bn_modes: Sequence[str] = ("official", "fold", "repaired"), betas: Sequence[float] | None = None,
                 eval_samples: int | None = None, device: str | None = None,
                 log: Callable[[str], None] = print) -> list[dict]:
    """β sweeps of the checkpoints of ``epochs`` (each the kept checkpoint of that epoch) for every BN mode of
    :data:`~.reproduction.SWEEP_MODES`, recorded in ``out/results.jsonl``; writes ``sweeps.csv`` (a row per epoch
    and mode) and ``sweeps.png``; returns the rows."""
    from .figures import largest_beta_within
    from .reproduction import SWEEP_MODES
    from .run import RunOptions, RunSpec
    from .sweep import OFFICIAL_EXTRA_BETAS, PAPER_BETAS, sweep
    kept = {c.epoch: c for c in kept_checkpoints(run_dir)}
    missing = [e for e in epochs if e not in kept]
    if missing:
        raise IFMError(f"no checkpoint of epoch {missing[0]} in {run_dir} (kept: {', '.join(map(str, kept))})")
    bad = [m for m in bn_modes if m not in SWEEP_MODES]
    if bad:
        raise IFMError(f"unknown BN mode {bad[0]!r}; choose from {', '.join(SWEEP_MODES)}")
    betas = tuple(betas or sorted(PAPER_BETAS + OFFICIAL_EXTRA_BETAS))
    Path(out).mkdir(parents=True, exist_ok=True)
    options = RunOptions(results=str(Path(out) / "results.jsonl"), device=device, workers=0, progress=False)
    curves: dict[tuple[int, str], list[dict]] = {}
    rows = []
    for epoch in epochs:
        for mode in bn_modes:
            spec = RunSpec(arch=arch, model_param=str(kept[epoch].path), data_root=data_root,
                           eval_samples=eval_samples, **SWEEP_MODES[mode])
            records = sweep(spec, options, betas, log=lambda line, e=epoch, m=mode: log(f"epoch {e} ({m}): {line}"))
            curves[(epoch, mode)] = sorted(records, key=lambda r: r["beta"])
            rows.append(_sweep_row(epoch, mode, records, largest_beta_within(records)))
    write_csv(Path(out) / "sweeps.csv", list(rows[0]), [list(r.values()) for r in rows])
    plot_sweeps(curves, Path(out) / "sweeps.png", title=run_title(arch, run_dir))
    return rows


def _sweep_row(epoch: int, mode: str, records: Sequence[dict], chosen: dict | None) -> dict:
    by_beta = {round(r["beta"], 6): r for r in records}

    def at(beta: float) -> str:
        r = by_beta.get(beta)
        return "-" if r is None else f"{r['acc_after']:.2f} ({r['params_pct']:.1f})"
    return {"epoch": epoch, "sweep": mode, "trained_acc": records[0]["acc_before"],
            "beta_95": chosen["beta"] if chosen else None,
            "params_pct_at_beta_95": round(chosen["params_pct"], 2) if chosen else None,
            "acc_at_beta_95": round(chosen["acc_after"], 2) if chosen else None,
            "acc_at_beta_0.1": at(0.1), "acc_at_beta_0.2": at(0.2)}


def plot_sweeps(curves: dict[tuple[int, str], list[dict]], path: str | Path, title: str = "") -> Path:
    """Accuracy against remaining parameters, one panel per BN mode, one curve per epoch (Fig. 3(a) per epoch)."""
    plt = pyplot()
    modes = list(dict.fromkeys(mode for _, mode in curves))
    epochs = sorted({epoch for epoch, _ in curves})
    colours = plt.get_cmap("plasma")
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for k, epoch in enumerate(epochs):
            records = curves.get((epoch, mode), [])
            ax.plot([r["params_pct"] for r in records], [r["acc_after"] for r in records], marker="o", markersize=3,
                    color=colours(k / max(len(epochs), 1)), label=f"epoch {epoch}")
        ax.set(xlabel="remaining parameters %", ylabel="test accuracy %", title=f"BN {mode}")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("IFM's curve at several epochs of one training" + (f": {title}" if title else ""))
    fig.tight_layout()
    return save_figure(fig, path)
