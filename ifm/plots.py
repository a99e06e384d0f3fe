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
    """One curve per label, one dot per β (Fig. 3(a), 4(a), 4(b)); the original accuracy as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in curves.items():
        points = sorted((r[x_field], r["acc_after"], r["beta"]) for r in records if r.get("acc_after") is not None)
        if not points:
            continue
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, beta in points:
            ax.annotate(f"{beta:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        before = next((r["acc_before"] for r in records if r.get("acc_before") is not None), None)
        if before is not None:
            ax.axhline(before, color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set(xlabel=x_label, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
