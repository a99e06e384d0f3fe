"""Controlled comparison of reproductions that differ in one setting (precision, augmentation, seed): per run,
the trained accuracy, IFM at Fig. 3(b)'s β for each sweep mode, and the checkpoint's structure (closest channels,
dead channels, from :mod:`.diagnose`); then, per control, what moved against the baseline, measured against the
spread between two seeds of the same recipe."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import IFMError
from .io import atomic_write, write_csv

MODES = ("official", "fold", "repaired")


@dataclass(frozen=True)
class ControlRun:
    """One reproduction folder (``reproduce_cifar10.py --out``) and what it changes against the baseline."""

    name: str
    changed: str
    folder: Path


def measure(run: ControlRun, model: str) -> dict:
    """What a run gives for ``model``: trained accuracy (fp32 evaluation), per mode the remaining parameters and
    accuracy at the largest β keeping ≥ 95 % of it, and from ``diagnose/<model>/diagnose.json`` the smallest
    normalised distance (last merged layer, and over all layers) and the dead channels."""
    summary_path = run.folder / "summary.json"
    if not summary_path.is_file():
        raise IFMError(f"{summary_path} is missing: run reproduce_cifar10.py --out {run.folder} first")
    summary = json.loads(summary_path.read_text())
    rows = {r["bn_mode"]: r for r in summary["models"] if r["model"] == model}
    if not rows:
        raise IFMError(f"{run.folder} has no sweep of {model}")
    found = {"run": run.name, "changed": run.changed,
             "trained_acc": next(iter(rows.values()))["trained_acc"]}
    for mode in MODES:
        r = rows.get(mode)
        found[f"{mode}_params_pct"] = r["params_pct_at_beta_95"] if r and r["beta_95"] is not None else None
        found[f"{mode}_acc"] = r["acc_at_beta_95"] if r and r["beta_95"] is not None else None
        found[f"{mode}_beta"] = r["beta_95"] if r else None
    diagnosis = run.folder / "diagnose" / model / "diagnose.json"
    if diagnosis.is_file():
        layers = json.loads(diagnosis.read_text())
        found.update(min_distance_last=layers[-1]["min_distance"],
                     min_distance_any=min(layer["min_distance"] for layer in layers),
                     dead_bn=sum(layer["dead_bn"] for layer in layers),
                     dead_relu=sum(layer["dead_relu"] or 0 for layer in layers))
    return found


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def table_rows(measured: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The comparison as text cells (the generated table of the docs)."""
    head = ["run", "changed", "trained acc", *[f"{m}: β95 → params % (acc)" for m in MODES],
            "min dist (last layer)", "dead (BN / ReLU)"]
    rows = []
    for m in measured:
        cells = [m["run"], m["changed"], _cell(m["trained_acc"], ".2f")]
        for mode in MODES:
            cells.append("–" if m[f"{mode}_params_pct"] is None else
                         f"{m[f'{mode}_beta']:g} → {m[f'{mode}_params_pct']:.1f} ({m[f'{mode}_acc']:.2f})")
        cells += [_cell(m.get("min_distance_last"), ".3g"),
                  f"{m['dead_bn']} / {m['dead_relu']}" if "dead_bn" in m else "–"]
        rows.append(cells)
    return head, rows


def effects(measured: Sequence[dict], seed_run: str | None) -> list[str]:
    """One sentence per control: how far each quantity moved from the baseline (the first run), next to the
    seed-to-seed spread (the run named ``seed_run``), and whether that is beyond it."""
    base = measured[0]
    seed = next((m for m in measured if m["run"] == seed_run), None)
    keys = [("trained_acc", "trained accuracy", "points"),
            *[(f"{mode}_params_pct", f"params kept at β95 ({mode})", "points") for mode in MODES]]

    def delta(run: dict, key: str) -> float | None:
        return None if run.get(key) is None or base.get(key) is None else run[key] - base[key]
    sentences = []
    for run in measured[1:]:
        parts = []
        for key, label, unit in keys:
            moved = delta(run, key)
            if moved is None:
                continue
            noise = delta(seed, key) if seed is not None and run is not seed else None
            verdict = ("" if noise is None else
                       " (beyond the seed spread)" if abs(moved) > abs(noise) else " (within the seed spread)")
            parts.append(f"{label} {moved:+.2f} {unit}{verdict}")
        sentences.append(f"- **{run['changed']}** ({run['run']}): " + "; ".join(parts) + ".")
    return sentences


def write_controls(measured: Sequence[dict], out: str | Path, model: str, seed_run: str | None) -> dict[str, Path]:
    """``controls.csv`` (the table's cells), ``controls.json`` (the numbers) and ``summary.md`` in ``out``."""
    out = Path(out)
    head, rows = table_rows(measured)
    written = {"csv": write_csv(out / "controls.csv", head, rows)}
    text = json.dumps(list(measured), indent=1)
    written["json"] = atomic_write(out / "controls.json", lambda tmp: Path(tmp).write_text(text))
    lines = [f"# Controls: {model}, what moves IFM's result", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"Against the baseline ({measured[0]['run']}); the spread between two seeds is the noise level:", ""]
    lines += effects(measured, seed_run)
    summary = "\n".join(lines) + "\n"
    written["md"] = atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(summary))
    return written
