"""The measured tables of the README and the docs, generated from the files in ``measured/``.

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in a Markdown file;
:func:`refresh` rewrites every such block from :data:`TABLES`, so a number in the documentation can always be
traced to a file and regenerated (``python scripts/results_tables.py --write``)."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable

from ..errors import IFMError
from .compare import format_frontier

BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise IFMError(f"{path} is missing: the table it feeds cannot be generated")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def withdrawn(folder: Path, current: str) -> bool:
    """Whether ``folder`` holds only withdrawn results: no ``current`` file or folder, and something named
    ``*WRONG*`` (results merged by code that lost channels-last first-layer merges, kept for the record)."""
    return not (folder / current).exists() and any(folder.glob("*WRONG*"))


def paper_scale(measured: Path) -> str:
    """The paper-scale run (four VGGs): trained accuracy, then accuracy (params kept %) at β 0.01 / 0.03 / 0.05
    with the official BN merge and with BN folded; "withdrawn" while the merges are the wrong ones (a
    ``results_WRONG_*.csv``: checkpoints merged by code that lost channels-last first-layer merges)."""
    folder = measured / "paper_scale_h200_bf16_s0"
    trained = {r["model"]: r["final_test_acc"] for r in _rows(folder / "training.csv")}
    if withdrawn(folder, "results.csv"):
        lines = ["| model | trained (paper) | merged |", "|---|---|---|"]
        lines += [f"| {model} | {float(acc):.2f}{' (93.51)' if model == 'VGG16' else ''} | withdrawn (merged by the "
                  "channels-last bug; checkpoints lost) |" for model, acc in trained.items()]
        return "\n".join(lines)
    points = _rows(folder / "results.csv")
    betas = sorted({float(r["beta"]) for r in points})
    lines = ["| model | trained (paper) | BN official: " + " / ".join(f"β {b:g}" for b in betas)
             + " | BN folded: " + " / ".join(f"β {b:g}" for b in betas) + " |", "|---|---|---|---|"]
    for model in trained:
        cells = []
        for mode in ("official", "fold"):
            found = {float(r["beta"]): r for r in points if r["model"] == model and r["bn_mode"] == mode}
            cells.append(" / ".join(f"{float(found[b]['acc_after']):.2f} ({float(found[b]['params_pct']):.1f})"
                                    if b in found else "–" for b in betas) if found else "not run")
        paper = " (93.51)" if model == "VGG16" else ""
        lines.append(f"| {model} | {float(trained[model]):.2f}{paper} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def frontier(measured: Path, methods: tuple[str, ...] | None = None, folder: str = "frontier_vgg11") -> str:
    """An accuracy-vs-parameters frontier (``<folder>/weights/frontier.csv``; by default the shared VGG11's); one
    "withdrawn" line while only a ``WRONG_channels_last/`` copy is there (merged by the channels-last bug)."""
    if withdrawn(measured / folder, "weights"):
        return ("| method | accuracy |\n|---|---|\n| every method | withdrawn: the checkpoint was stored channels-last "
                "and merged wrongly (kept in `WRONG_channels_last/`); to be recomputed on an fp32 checkpoint |")
    rows = _rows(measured / folder / "weights" / "frontier.csv")
    curves: dict[str, list[dict]] = {}
    for r in rows:
        if methods is None or r["method"] in methods:
            std = r.get("acc_after_std")
            curves.setdefault(r["method"], []).append(
                {"target_params": float(r["target_params"]), "params_pct": float(r["params_pct"]),
                 "acc_after": float(r["acc_after"]), "acc_after_std": float(std) if std else None})
    budgets = sorted({float(r["target_params"]) for r in rows}, reverse=True)
    return format_frontier(curves, budgets)


README_FRONTIER = ("IFM (uniform widths)", "IFM (uniform widths) + correction (weights)",
                   "IFM (uniform widths, mean rule) + correction (rows)",
                   "IFM (uniform widths, mean rule) + BN re-estimated on 64 synthetic images",
                   "k-means + correction (weights)", "k-means + BN re-estimated on 64 synthetic images",
                   "IFM (uniform) + BN re-estimated on 2000 training images",
                   "IFM (uniform widths, mean rule) + 64 synthetic images + distillation (500 steps, 64 images)")


def controls(measured: Path) -> str:
    """Reduced-profile controls (``controls_reduced/controls.csv``, written by ``reproduce.py controls``)."""
    rows = _rows(measured / "controls_reduced" / "controls.csv")
    head = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)


def long_run(measured: Path, folder: str = "long_vgg16_w0125_s0") -> str:
    """A training followed epoch by epoch (``<folder>/epochs/``): at each swept epoch the trained accuracy, the last
    merged layer's smallest normalised distance, the dead channels of all layers, and per sweep the β keeping 95 %
    of the accuracy (remaining parameters %, accuracy) and the accuracy at β 0.1 and 0.2."""
    base = measured / folder / "epochs"
    diagnosis = _rows(base / "epochs.csv")
    sweeps = _rows(base / "sweeps.csv")
    last = diagnosis[-1]["group"]
    closest = {int(r["epoch"]): float(r["min_distance"]) for r in diagnosis if r["group"] == last}
    dead = {}
    for r in diagnosis:
        dead[int(r["epoch"])] = dead.get(int(r["epoch"]), 0) + int(r["dead_bn"]) + int(r["dead_relu"] or 0)
    modes = list(dict.fromkeys(r["sweep"] for r in sweeps))
    lines = ["| epoch | trained acc | smallest distance (last layer) | dead channels | "
             + " | ".join(f"{m}: β95 → params % (acc); acc at β 0.1 / 0.2" for m in modes) + " |",
             "|---" * (4 + len(modes)) + "|"]
    for epoch in sorted({int(r["epoch"]) for r in sweeps}):
        mine = {r["sweep"]: r for r in sweeps if int(r["epoch"]) == epoch}
        cells = []
        for m in modes:
            r = mine.get(m)
            cells.append("-" if r is None else f"{r['beta_95']} → {float(r['params_pct_at_beta_95']):.1f} "
                         f"({float(r['acc_at_beta_95']):.2f}); {r['acc_at_beta_0.1'].split(' ')[0]} / "
                         f"{r['acc_at_beta_0.2'].split(' ')[0]}" if r["beta_95"] else f"- ; {r['acc_at_beta_0.1']}")
        first = next(iter(mine.values()))
        lines.append(f"| {epoch} | {float(first['trained_acc']):.2f} | {closest.get(epoch, float('nan')):.3g} | "
                     f"{dead.get(epoch, '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[Path], str]] = {
    "paper-scale": paper_scale,
    "frontier": frontier,
    "frontier-short": lambda measured: frontier(measured, README_FRONTIER),
    "frontier-resnet18": lambda measured: frontier(measured, folder="frontier_resnet18_reduced"),
    "controls": controls,
    "long-run": long_run,
}


def refresh(text: str, measured: Path) -> str:
    """``text`` with every generated block rewritten from the files under ``measured``."""
    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise IFMError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return f"{match[1]}{TABLES[name](measured)}\n{match[4]}"
    return BLOCK.sub(block, text)


def documents(root: Path) -> list[Path]:
    """The Markdown files that may hold generated tables: the README and the docs."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]

