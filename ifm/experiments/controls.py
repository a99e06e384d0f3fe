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
from .io import atomic_write, read_jsonl, write_csv
from .reproduction import SWEEP_MODES

#: the β values at which every sweep mode's accuracy is compared (besides Fig. 3(b)'s β)
REFERENCE_BETAS = (0.1, 0.2)


@dataclass(frozen=True)
class ControlRun:
    """One reproduction folder (``reproduce_cifar10.py --out``) and what it changes against the baseline."""

    name: str
    changed: str
    folder: Path


def measure(run: ControlRun, model: str, betas: Sequence[float] = REFERENCE_BETAS) -> dict:
    """What a run gives for ``model``: trained accuracy (fp32 evaluation); per sweep mode the remaining parameters
    and accuracy at the largest β keeping ≥ 95 % of it, and at each of ``betas``; from
    ``diagnose/<model>/diagnose.json`` the smallest normalised distance (last merged layer, all layers) and the
    dead channels."""
    summary_path = run.folder / "summary.json"
    if not summary_path.is_file():
        raise IFMError(f"{summary_path} is missing: run reproduce_cifar10.py --out {run.folder} first")
    summary = json.loads(summary_path.read_text())
    rows = {r["bn_mode"]: r for r in summary["models"] if r["model"] == model}
    if not rows:
        raise IFMError(f"{run.folder} has no sweep of {model}")
    records = [r for r in read_jsonl(run.folder / "results.jsonl") if r.get("model") == model]
    found = {"run": run.name, "changed": run.changed, "trained_acc": next(iter(rows.values()))["trained_acc"],
             "modes": {}}
    for mode, r in rows.items():
        fields = SWEEP_MODES.get(mode, {"bn_mode": mode})
        mine = [x for x in records if all(x.get(k, "none") == v for k, v in fields.items())
                and (x.get("bn_correction", "none") == fields.get("bn_correction", "none"))]
        found["modes"][mode] = {
            "beta_95": r["beta_95"], "params_pct_95": r["params_pct_at_beta_95"], "acc_95": r["acc_at_beta_95"],
            **{f"at_{b:g}": next(((x["acc_after"], x["params_pct"]) for x in mine if abs(x["beta"] - b) < 1e-9),
                                 None) for b in betas}}
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


def table_rows(measured: Sequence[dict], betas: Sequence[float] = REFERENCE_BETAS
               ) -> tuple[list[str], list[list[str]]]:
    """The comparison as text cells, one row per run and sweep mode (the generated table of the docs)."""
    head = ["run", "changed", "trained acc", "min dist (last layer)", "dead (BN / ReLU)", "sweep",
            "β95 → params % (acc)", *[f"acc at β {b:g} (params %)" for b in betas]]
    rows = []
    for m in measured:
        structure = [_cell(m.get("min_distance_last"), ".3g"), f"{m['dead_bn']} / {m['dead_relu']}" if "dead_bn" in m
                     else "–"]
        for mode, r in m["modes"].items():
            chosen = "–" if r["beta_95"] is None else f"{r['beta_95']:g} → {r['params_pct_95']:.1f} ({r['acc_95']:.2f})"
            at = [_cell(r[f"at_{b:g}"] and r[f"at_{b:g}"][0], ".2f")
                  + ("" if r[f"at_{b:g}"] is None else f" ({r[f'at_{b:g}'][1]:.1f})") for b in betas]
            rows.append([m["run"], m["changed"], _cell(m["trained_acc"], ".2f"), *structure, mode, chosen, *at])
    return head, rows


def _quantities(run: dict, betas: Sequence[float]) -> dict[str, float]:
    """The numbers a control may move, by label."""
    found = {"trained accuracy": run["trained_acc"]}
    for mode, r in run["modes"].items():
        if r["params_pct_95"] is not None:
            found[f"params kept at β95 ({mode})"] = r["params_pct_95"]
        for b in betas:
            if r[f"at_{b:g}"] is not None:
                found[f"accuracy at β {b:g} ({mode})"] = r[f"at_{b:g}"][0]
    return found


def effects(measured: Sequence[dict], seed_run: str | None, betas: Sequence[float] = REFERENCE_BETAS) -> list[str]:
    """One sentence per control: how far each quantity moved from the baseline (the first run), next to the
    seed-to-seed spread (the run named ``seed_run``), and whether that is beyond it."""
    base = _quantities(measured[0], betas)
    seed = next((_quantities(m, betas) for m in measured if m["run"] == seed_run), None)
    sentences = []
    for run in measured[1:]:
        mine = _quantities(run, betas)
        parts = []
        for label, value in mine.items():
            if label not in base:
                continue
            moved = value - base[label]
            noise = None if seed is None or run["run"] == seed_run or label not in seed else seed[label] - base[label]
            verdict = ("" if noise is None else
                       " (beyond the seed spread)" if abs(moved) > abs(noise) else " (within the seed spread)")
            parts.append(f"{label} {moved:+.2f}{verdict}")
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
    lines += ["", f"Against the baseline ({measured[0]['run']}), in accuracy or parameter points; the difference "
              "between two seeds of the baseline's recipe is the noise level:", ""]
    lines += effects(measured, seed_run)
    summary = "\n".join(lines) + "\n"
    written["md"] = atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(summary))
    return written
