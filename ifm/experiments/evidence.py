"""The paper-scale evidence a CPU cannot make, in one command for one GPU (``scripts/paper_evidence.py``).

Trains together, with the paper's recipe (App. D: 150 epochs, batch 128, lr 0.1 / 10 at epochs 80 and 120): VGG16
seed 0, VGG16 seed 1, VGG16 with the flip only (seed 0) and ResNet18 seed 0, keeping a checkpoint every 10 epochs.
Then, in order of what matters, as long as the time budget lasts (each step resumes on a second call):

1. β sweeps of every final checkpoint: official merge, BN folded, data-free repair (ResNet18: stages 3-4, the
   official merge of App. D);
2. the diagnosis (:mod:`.diagnose`) of epochs 80, 120 and 150;
3. sweeps of epochs 80 and 120 (VGG16);
4. the diagnosis of every other kept epoch.

It writes one folder per run (``<run>/checkpoints/``, ``<run>/epochs/``: :mod:`.epochs`' files), ``evidence.md`` and
``evidence.json`` (what ran, what the budget left out), and packs everything but the checkpoints into one archive
to copy back (``--archive``). The smoke profile runs the same in seconds on a CPU (the tests).
"""
from __future__ import annotations

import json
import tarfile
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import IFMError
from .io import atomic_write, read_jsonl, write_json
from .reproduction import PROFILES, Profile, ReproductionSettings, train_runs


@dataclass(frozen=True)
class EvidenceRun:
    """One training of the evidence: its folder name, model, seed and augmentation."""

    name: str
    model: str
    seed: int = 0
    augment: tuple[str, ...] = ("crop", "flip")


RUNS: tuple[EvidenceRun, ...] = (EvidenceRun("vgg16_s0", "VGG16"), EvidenceRun("vgg16_s1", "VGG16", seed=1),
                                 EvidenceRun("vgg16_flip_s0", "VGG16", augment=("flip",)),
                                 EvidenceRun("resnet18_s0", "ResNet18"))


@dataclass(frozen=True)
class EvidenceProfile:
    """How far the evidence goes: the training profile, a checkpoint every ``save_every`` epochs, the epochs that
    are swept and diagnosed first, the β grid and the BN modes of the sweeps."""

    name: str
    training: Profile
    save_every: int
    key_epochs: tuple[int, ...]
    betas: tuple[float, ...]
    bn_modes: tuple[str, ...] = ("official", "fold", "repaired")
    test_samples: int | None = 2000  # test images evaluated after each training epoch
    eval_samples: int | None = None  # test images of the sweeps (None: all)


EVIDENCE_PROFILES = {
    "gpu": EvidenceProfile("gpu", PROFILES["paper"], 10, (80, 120, 150), (0.01, 0.03, 0.05, 0.1, 0.2, 0.3)),
    "smoke": EvidenceProfile("smoke", replace(PROFILES["smoke"], overrides=PROFILES["smoke"].overrides + (
        "train.epochs=2", "train.milestones=[1]")), 1, (1, 2), (0.3,), ("official",), 20),
}


def _settings(run: EvidenceRun, profile: EvidenceProfile, data_root: str, out: Path, device: str | None,
              precision: str) -> ReproductionSettings:
    return ReproductionSettings(profile.training.name, (run.model,), data_root, str(out / run.name), device,
                                precision, run.seed, progress=False, augment=run.augment)


def _training_profile(profile: EvidenceProfile) -> Profile:
    extra = (f"train.save_every={profile.save_every}",) + (
        (f"data.test_samples={profile.test_samples}",) if profile.test_samples else ())
    return replace(profile.training, overrides=profile.training.overrides + extra)


def run_evidence(profile_name: str, data_root: str, out: str | Path, device: str | None = None,
                 precision: str = "bf16", minutes: float = 9.0, runs: Sequence[EvidenceRun] = RUNS,
                 archive: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Train the runs together, then sweep and diagnose in order of importance until ``minutes`` (from the call)
    are spent; write ``evidence.md``/``evidence.json`` and, with ``archive``, a ``.tar.gz`` of the folder without
    its checkpoints. Returns the summary."""
    if profile_name not in EVIDENCE_PROFILES:
        raise IFMError(f"unknown evidence profile {profile_name!r}; choose one of {sorted(EVIDENCE_PROFILES)}")
    profile = EVIDENCE_PROFILES[profile_name]
    deadline = time.monotonic() + 60.0 * minutes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = [_settings(run, profile, data_root, out, device, precision) for run in runs]
    start = time.perf_counter()
    finals = train_runs(settings, _training_profile(profile), log)
    seconds = {"train": time.perf_counter() - start}
    steps = _steps(runs, [c[r.model].parent.parent for r, c in zip(runs, finals)], profile, out, data_root, device,
                   log)
    done, skipped = [], []
    for what, run, step in steps:
        if time.monotonic() > deadline:
            skipped.append(f"{run.name}: {what}")
            continue
        begun = time.perf_counter()
        step()
        done.append({"step": f"{run.name}: {what}", "seconds": round(time.perf_counter() - begun, 1)})
    seconds["after training"] = time.perf_counter() - start - seconds["train"]
    summary = _summary(out, runs, profile, precision, done, skipped, seconds)
    if archive:
        pack(out, archive)
        log(f"archive: {archive}")
    return summary


def _steps(runs: Sequence[EvidenceRun], run_dirs: Sequence[Path], profile: EvidenceProfile, out: Path,
           data_root: str, device: str | None, log: Callable[[str], None]) -> list[tuple[str, EvidenceRun, Callable]]:
    """What follows the training, by priority: sweeps of the final epoch, diagnoses of the key epochs, sweeps of the
    other key epochs (VGGs), diagnoses of every kept epoch."""
    from .epochs import diagnose_epochs, sweep_epochs
    final = max(profile.key_epochs)

    def sweep(run: EvidenceRun, run_dir: Path, epochs: Sequence[int]) -> Callable:
        return partial(sweep_epochs, run.model, run_dir, list(epochs), out / run.name / "epochs", data_root,
                       profile.bn_modes, profile.betas, profile.eval_samples, device,
                       log=lambda line: log(f"{run.name} {line}"))

    def diagnose(run: EvidenceRun, run_dir: Path, epochs: Sequence[int] | None) -> Callable:
        return partial(diagnose_epochs, run.model, run_dir, out / run.name / "epochs", data_root, epochs=epochs,
                       log=lambda line: log(f"{run.name} {line}"))
    pairs = list(zip(runs, run_dirs))
    return ([("sweep the final epoch", r, sweep(r, d, [final])) for r, d in pairs]
            + [("diagnose the key epochs", r, diagnose(r, d, profile.key_epochs)) for r, d in pairs]
            + [("sweep the other key epochs", r, sweep(r, d, profile.key_epochs)) for r, d in pairs
               if r.model.startswith("VGG") and len(profile.key_epochs) > 1]
            + [("diagnose every kept epoch", r, diagnose(r, d, None)) for r, d in pairs])


def _summary(out: Path, runs: Sequence[EvidenceRun], profile: EvidenceProfile, precision: str, done: list,
             skipped: list, seconds: dict) -> dict:
    per_run = {}
    for run in runs:
        folder = out / run.name
        training = folder / "checkpoints" / run.model / "summary.json"
        diagnosis = sorted(read_jsonl(folder / "epochs" / "epochs.jsonl"), key=lambda r: r["epoch"])
        last_layer = [r for r in diagnosis if r["group"] == diagnosis[-1]["group"]] if diagnosis else []
        sweeps = folder / "epochs" / "sweeps.csv"
        per_run[run.name] = {
            **asdict(run), "training": json.loads(training.read_text()).get("final") if training.exists() else None,
            "last_layer_min_distance": {r["epoch"]: r["min_distance"] for r in last_layer},
            "dead_channels": {e: sum(r["dead_bn"] + (r["dead_relu"] or 0) for r in diagnosis if r["epoch"] == e)
                              for e in dict.fromkeys(r["epoch"] for r in diagnosis)},
            "sweeps": sweeps.read_text() if sweeps.exists() else None}
    summary = {"profile": profile.name, "precision": precision, "torch_version": torch.__version__,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "runs": per_run, "done": done, "left_out_by_the_time_budget": skipped,
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    write_json(out / "evidence.json", summary)
    lines = [f"# Paper-scale evidence: profile `{profile.name}`", "",
             f"{summary['device']}, torch {summary['torch_version']}, {precision}; training {seconds['train']:.0f} s, "
             f"then {seconds['after training']:.0f} s of sweeps and diagnoses.", ""]
    for name, r in per_run.items():
        final = r["training"] or {}
        lines += [f"## {name}: {r['model']}, seed {r['seed']}, {' + '.join(r['augment'])}", "",
                  f"Trained: test accuracy {final.get('test_acc', '-')} % (training's evaluation).", "",
                  "Last layer's smallest normalised distance by epoch: "
                  + (", ".join(f"{e}: {d:.3g}" for e, d in r["last_layer_min_distance"].items()) or "-")
                  + "; dead channels by epoch: " + (", ".join(f"{e}: {n}" for e, n in r["dead_channels"].items())
                                                    or "-") + ".", ""]
        if r["sweeps"]:
            rows = [line.split(",") for line in r["sweeps"].strip().splitlines()]
            lines += ["| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows[1:]] + [""]
    lines += ["Left out by the time budget (run the same command again to continue): "
              + ("; ".join(skipped) if skipped else "nothing") + "."]
    atomic_write(out / "evidence.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return summary


def pack(folder: str | Path, archive: str | Path) -> Path:
    """A ``.tar.gz`` of ``folder`` without its checkpoints and training state (``*.pt``), written atomically."""
    folder = Path(folder)

    def write(tmp: str) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix != ".pt":
                    tar.add(path, arcname=str(Path(folder.name) / path.relative_to(folder)))
    return atomic_write(archive, write)
