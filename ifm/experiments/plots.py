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


def include_with_margin(ax, values: Sequence[float], margin: float = 0.06) -> None:
    """Set ``ax``'s y range so that every value (reference lines included, which matplotlib does not autoscale
    to) lies inside, ``margin`` of the range away from the spines."""
    finite = [float(v) for v in values if v is not None and v == v]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    pad = margin * (hi - lo) if hi > lo else 1.0
    ax.set_ylim(lo - pad, hi + pad)


def beta_label_layout(curves: Sequence[Sequence[tuple[float, float, float]]], coincide: float = 0.015,
                      char_width: float = 0.0105, height: float = 0.04) -> list[list[tuple[str, float, float]]]:
    """Where to write the β labels of accuracy curves: ``curves`` holds each curve's points ``(u, v, beta)`` in
    axes coordinates (0..1). Points of a curve that coincide get one label (``β 0.01–0.1``); every label is
    placed beside its point, inside the axes, where it overlaps the labels placed before it least (the accurate
    end of each curve first). Returns, per curve, ``(text, u, v)``: the label's lower-left corner."""
    boxes: list[tuple[float, float, float, float]] = []
    layout = []
    for points in curves:
        clusters: list[list[tuple[float, float, float]]] = []
        for u, v, beta in sorted(points, key=lambda p: p[2]):
            last = clusters[-1][-1] if clusters else None
            if last and abs(last[0] - u) <= coincide and abs(last[1] - v) <= coincide:
                clusters[-1].append((u, v, beta))
            else:
                clusters.append([(u, v, beta)])
        labels = []
        for cluster in sorted(clusters, key=lambda c: -c[0][1]):
            betas = [p[2] for p in cluster]
            text = f"β={betas[0]:g}" if len(betas) == 1 else f"β {betas[0]:g}–{betas[-1]:g}"
            u, v = cluster[0][0], cluster[0][1]
            width, gap = char_width * len(text), 0.012
            best = None
            for du, dv in ((gap, gap), (gap, -gap - height), (-gap - width, gap), (-gap - width, -gap - height),
                           (gap, 2 * gap + height), (-gap - width, 2 * gap + height)):
                box = (u + du, v + dv, u + du + width, v + dv + height)
                outside = max(0.0, -box[0]) + max(0.0, -box[1]) + max(0.0, box[2] - 1) + max(0.0, box[3] - 1)
                overlap = sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0])) *
                              max(0.0, min(box[3], b[3]) - max(box[1], b[1])) for b in boxes)
                if best is None or (outside, overlap) < best[0]:
                    best = ((outside, overlap), box)
            boxes.append(best[1])
            labels.append((text, best[1][0], best[1][1]))
        layout.append(labels)
    return layout


def plot_accuracy_vs_params(curves: Mapping[str, Sequence[dict]], path: str | Path, title: str = "",
                            x_field: str = "params_pct", x_label: str = "remaining parameters (%)") -> Path:
    """One curve per label, one dot per β (Fig. 3(a), 4(a), 4(b)); the original accuracy as a dashed line. Every
    point is labelled with its β, coinciding points of a curve with one range (see :func:`beta_label_layout`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
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
    layout = beta_label_layout([[(*to_axes.transform((x, y)), beta) for x, y, beta in points] for _, points in drawn])
    for (line, _), labels in zip(drawn, layout):
        for text, u, v in labels:
            ax.text(u, v, text, transform=ax.transAxes, fontsize=7, color=line.get_color(), va="bottom")
    if drawn:
        ax.plot([], [], color="gray", linestyle="--", linewidth=0.8, label="original accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


def plot_frontier(curves: Mapping[str, Sequence[dict]], path: str | Path, styles: Mapping[str, Mapping],
                  title: str = "", legend_below: bool = False) -> Path:
    """Accuracy against remaining parameters, one curve per method drawn with ``styles[label]`` (matplotlib line
    keywords: colour, line style, marker), the original accuracy as a grey dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.6) if legend_below else (8, 4.8))
    before, shown = None, []
    for label, records in curves.items():
        points = sorted((r["params_pct"], r["acc_after"], r.get("acc_after_std") or 0.0) for r in records
                        if r.get("acc_after") is not None)
        if not points:
            continue
        xs, ys, err = zip(*points)
        shown += ys
        line, = ax.plot(xs, ys, markersize=5, label=label, **styles[label])
        if any(err):
            ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=line.get_color(), capsize=3)
        before = next((r["acc_before"] for r in records if r.get("acc_before") is not None), before)
    if before is not None:
        ax.axhline(before, color="tab:red", linestyle=(0, (8, 4)), linewidth=0.9, label="original accuracy")
    ax.set(xlabel="remaining parameters (%)", ylabel="test accuracy (%)", title=title)
    ax.set_xlim(0, 105)
    if legend_below:  # the few headline curves: the accuracy range they span
        include_with_margin(ax, [*shown, before])
    else:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # (nothing evaluated: no curve to name)
        ax.legend(**(dict(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False) if legend_below
                     else dict(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))))
    return save_figure(fig, path)
