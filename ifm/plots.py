"""Figures from result records (matplotlib, Agg backend, written atomically as PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .io import atomic_write


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> Path:
    plt = pyplot()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_accuracy_vs_params(curves: Mapping[str, Sequence[dict]], path: str | Path, title: str = "",
                            x_field: str = "params_pct", x_label: str = "remaining parameters (%)") -> Path:
    """One curve per label, one dot per β (Fig. 3(a), 4(a), 4(b)); the original accuracy as a dashed line.
    β labels that would overlap an earlier label are left out (every β is in the CSV beside the figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    labelled: list[tuple[float, float]] = []
    drawn = []
    for label, records in curves.items():
        points = sorted((r[x_field], r["acc_after"], r["beta"]) for r in records if r.get("acc_after") is not None)
        if not points:
            continue
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        spread = {r["beta"]: r["acc_after_std"] for r in records if r.get("acc_after_std") is not None}
        if spread:  # several seeds (random pruning): their standard deviation as error bars
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[spread.get(p[2], 0) for p in points],
                        fmt="none", ecolor=line.get_color(), capsize=3)
        drawn.append((line, points))
        before = next((r["acc_before"] for r in records if r.get("acc_before") is not None), None)
        if before is not None:
            ax.axhline(before, color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set(xlabel=x_label, ylabel="test accuracy (%)", title=title)
    ax.set_xlim(0, 105 if x_field.endswith("_pct") else None)
    fig.canvas.draw()
    to_axes = ax.transData + ax.transAxes.inverted()
    for line, points in drawn:
        for x, y, beta in sorted(points, key=lambda p: -p[1]):  # the accurate end first: it matters most
            u, v = to_axes.transform((x, y))
            if all(abs(u - a) > 0.09 or abs(v - b) > 0.035 for a, b in labelled):
                labelled.append((u, v))
                ax.annotate(f"β={beta:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=line.get_color())
    if drawn:
        ax.plot([], [], color="gray", linestyle="--", linewidth=0.8, label="original accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


def plot_frontier(curves: Mapping[str, Sequence[dict]], path: str | Path, title: str = "",
                  dotted: frozenset[str] | set[str] = frozenset()) -> Path:
    """Accuracy against remaining parameters, one curve per method (``dotted``: references that use data), the
    original accuracy as a grey dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    before = None
    for label, records in curves.items():
        points = sorted((r["params_pct"], r["acc_after"], r.get("acc_after_std") or 0.0) for r in records
                        if r.get("acc_after") is not None)
        if not points:
            continue
        xs, ys, err = zip(*points)
        line, = ax.plot(xs, ys, marker="o", markersize=4, label=label, linestyle=":" if label in dotted else "-")
        if any(err):
            ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=line.get_color(), capsize=3)
        before = next((r["acc_before"] for r in records if r.get("acc_before") is not None), before)
    if before is not None:
        ax.axhline(before, color="gray", linestyle="--", linewidth=0.8, label="original accuracy")
    ax.set(xlabel="remaining parameters (%)", ylabel="test accuracy (%)", title=title)
    ax.set_xlim(0, 105)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)
