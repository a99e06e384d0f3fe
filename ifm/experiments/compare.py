"""The accuracy-vs-parameters frontier (``scripts/compare_methods.py``): IFM and its data-free peers at the same
parameter budgets, one record per (method, budget) appended to one results file (resumable), one CSV, one figure.

Compared, at every budget P (percent of the parameters kept):

* IFM with β allocation (the largest β that keeps P %), and IFM with uniform widths (the same share merged in
  every group), each without and with the data-free correction (:mod:`ifm.correction`); and IFM with uniform widths,
  the mean rule and the ``rows`` correction (on the VGG11, the best data-free result at the smallest budgets);
* IFM with uniform widths (official and mean rule) and BN statistics re-estimated on images synthesised from the
  original network's BN statistics (:mod:`ifm.synthesis`; data-free);
* k-means clusters merged by the mean rule (Model Folding's plain fold), without and with the correction
  (with it: our analogue of their data-free Fold-AR), and with the synthetic-image re-estimation (their Fold-DIR's
  analogue);
* L1 and random channel pruning at the uniform widths;
* BN statistics re-estimated on training images after IFM with uniform widths: a reference that uses data (dotted);
* with ``--distill STEPS``: IFM (uniform, mean rule; and β allocation) and k-means with the synthetic-image
  re-estimation, then distilled from the original on the synthesised images (:mod:`ifm.distill`); and the same
  distillation on real training images, the reference that says what synthesis costs (dotted).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .io import read_jsonl, write_csv
from .plots import plot_frontier
from .run import RunOptions, RunSpec
from .evaluate import Evaluator
from .loading import load_model
from ..device import pick_device
from .selfmerge import run_identity, run_self_merge, validate
from .sweep import run_key

PAPER_BUDGETS: tuple[float, ...] = (75.0, 56.0, 42.0, 25.0, 12.0, 6.3)


#: the frontier's families of methods and the colour each is drawn in (:func:`frontier_styles`)
FAMILY_COLOURS: dict[str, str] = {"IFM, β allocation": "tab:blue", "IFM, uniform widths": "tab:green",
                                  "k-means (Model Folding)": "tab:orange", "pruning": "tab:gray", "uses data": "black"}
FAMILIES: tuple[str, ...] = tuple(FAMILY_COLOURS)
#: line styles within a family, and markers across the figure, each used once
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "H", "8", "x", "+", "1", "2", "3")


@dataclass(frozen=True)
class Method:
    """One compared method: its label, the run it makes at a budget, its family (one colour in the figures),
    whether it uses data (a reference), whether it is one of the few curves of the short figure, and the budgets
    it runs at when not all of them (the costly distilled rows)."""

    label: str
    spec: RunSpec
    family: str
    uses_data: bool = False
    headline: bool = False
    budgets: tuple[float, ...] | None = None


def methods(spec: RunSpec, estimator: str = "weights", recalibrate: int = 2000, synthetic: int = 64,
            distill_budgets: Sequence[float] | None = None) -> list[Method]:
    """The compared methods, each a variant of ``spec`` (its checkpoint, data and evaluation settings); with
    ``spec.distill`` steps, the distilled methods too (at ``distill_budgets`` only, when given)."""
    steps = spec.distill
    base = spec.replace(method="ifm", bn_mode="official", recalibrate_bn=0, synthetic_bn=0, bn_correction="none",
                        allocation="ifm", merge_rule="official", distill=0, distill_images=0,
                        distill_data="synthetic")
    uniform = base.replace(allocation="uniform")
    kmeans = uniform.replace(method="kmeans")
    beta, even, folding, pruning, data = FAMILIES
    found = [Method("IFM (β allocation)", base, beta, headline=True),
             Method(f"IFM (β allocation) + correction ({estimator})", base.replace(bn_correction=estimator), beta),
             Method("IFM (uniform widths)", uniform, even),
             Method(f"IFM (uniform widths) + correction ({estimator})", uniform.replace(bn_correction=estimator),
                    even),
             Method("IFM (uniform widths, mean rule) + correction (rows)",  # the best data-free at the smallest budgets
                    uniform.replace(merge_rule="mean", bn_correction="rows"), even),
             *([Method(f"IFM (uniform widths) + BN re-estimated on {synthetic} synthetic images",
                       uniform.replace(synthetic_bn=synthetic), even),
                Method(f"IFM (uniform widths, mean rule) + BN re-estimated on {synthetic} synthetic images",
                       uniform.replace(merge_rule="mean", synthetic_bn=synthetic), even, headline=True)]
               if synthetic else []),
             Method("k-means, mean rule (Model Folding's fold)", kmeans, folding),
             Method(f"k-means + correction ({estimator})", kmeans.replace(bn_correction=estimator), folding),
             *([Method(f"k-means + BN re-estimated on {synthetic} synthetic images",
                       kmeans.replace(synthetic_bn=synthetic), folding, headline=True)] if synthetic else []),
             Method("L1 pruning (uniform widths)", uniform.replace(method="l1"), pruning),
             Method(f"random pruning (uniform widths, {spec.seeds} seeds)", uniform.replace(method="random"),
                    pruning)]
    if recalibrate and spec.evaluates:
        found.append(Method(f"IFM (uniform) + BN re-estimated on {recalibrate} training images",
                            uniform.replace(recalibrate_bn=recalibrate), data, uses_data=True, headline=True))
    at = tuple(float(b) for b in distill_budgets) if distill_budgets else None
    mixing = f", {spec.distill_mix}" if spec.distill_mix != "none" else ""  # (unmixed rows keep their first labels)
    if steps and synthetic:
        distilled = dict(synthetic_bn=synthetic, distill=steps, distill_images=spec.distill_images,
                         distill_mix=spec.distill_mix)
        images = f"{spec.distill_images or synthetic} images{mixing}"
        found += [Method(f"IFM (uniform widths, mean rule) + {synthetic} synthetic images + distillation "
                         f"({steps} steps, {images})", uniform.replace(merge_rule="mean", **distilled), even,
                         headline=True, budgets=at),
                  Method(f"k-means + {synthetic} synthetic images + distillation ({steps} steps, {images})",
                         kmeans.replace(**distilled), folding, budgets=at)]
    if steps and recalibrate and spec.evaluates:
        found.append(Method(f"IFM (uniform widths, mean rule) + distillation on {recalibrate} training images "
                            f"({steps} steps{mixing})", uniform.replace(merge_rule="mean", recalibrate_bn=recalibrate,
                                                                distill=steps, distill_data="real",
                                                                distill_images=recalibrate,
                                                                distill_mix=spec.distill_mix),
                            data, uses_data=True, headline=True, budgets=at))
    if steps and synthetic:  # last: the β allocation merges unevenly, the costliest row to repair
        found.append(Method(f"IFM (β allocation) + {synthetic} synthetic images + distillation ({steps} steps, "
                            f"{images})", base.replace(**distilled), beta, budgets=at))
    return found


def check_frontier(options: RunOptions, budgets: Sequence[float], compared: Sequence[Method]
                   ) -> list[tuple[Method, RunSpec]]:
    """Every (method, budget) run, each validated before the first one starts."""
    runs = [(m, m.spec.replace(target_params=float(b))) for m in compared
            for b in budgets if m.budgets is None or float(b) in m.budgets]
    for _, run in runs:
        validate(run, options)
    return runs


def frontier(spec: RunSpec, options: RunOptions, budgets: Sequence[float], compared: Sequence[Method],
             log: Callable[[str], None] = print, run_missing: bool = True) -> dict[str, list[dict]]:
    """Run every method at every budget not yet recorded in ``options.results`` (``run_missing=False``: leave
    those out, to tabulate and draw what is recorded); the records by method label."""
    runs = check_frontier(options, budgets, compared)
    device = pick_device(options.device)
    evaluator, curves = None, {}
    loaded_by_rule = {}
    for method, run in runs:
        key = "kmeans" if run.method == "kmeans" else run.merge_rule
        if key not in loaded_by_rule:
            loaded_by_rule[key] = load_model(run)
        loaded = loaded_by_rule[key]
        if run.evaluates and evaluator is None:
            evaluator = Evaluator(loaded, run, options, device)
        identity = run_key(run_identity(run, loaded, evaluator))
        done = [r for r in read_jsonl(options.results) if run_key(r) == identity]
        if done:
            record = done[-1]
            log(f"{method.label} @ {run.target_params:g} %: already in {options.results}, skipped")
        elif not run_missing:
            log(f"{method.label} @ {run.target_params:g} %: not in {options.results}, left out")
            continue
        else:
            record = run_self_merge(run, options, loaded=loaded, evaluator=evaluator)
            acc = "-" if record["acc_after"] is None else f"{record['acc_after']:.2f} %"
            log(f"{method.label} @ {run.target_params:g} %: params {record['params_pct']:.2f} %, accuracy {acc}")
        curves.setdefault(method.label, []).append(record)
    return curves


FIELDS = ("method", "family", "target_params", "params_pct", "acc_after", "acc_after_std", "beta", "max_ratio",
          "n_merges", "merge_seconds", "correction_seconds", "acc_before", "uses_data", "headline")


def frontier_styles(compared: Sequence[Method]) -> dict[str, dict]:
    """A line style per method that no other method shares: one colour per family (:data:`FAMILIES`), and within
    a family a line style and a marker of its own (markers never repeat across the figure either)."""
    styles, within = {}, dict.fromkeys(FAMILIES, 0)
    for index, method in enumerate(compared):
        styles[method.label] = dict(color=FAMILY_COLOURS[method.family],
                                    linestyle=LINE_STYLES[within[method.family] % len(LINE_STYLES)],
                                    marker=MARKERS[index % len(MARKERS)])
        within[method.family] += 1
    return styles


def write_frontier(curves: dict[str, list[dict]], compared: Sequence[Method], out: str | Path, title: str
                   ) -> tuple[Path, Path, Path]:
    """``frontier.csv`` (one row per method and budget), ``frontier.png`` (every method) and
    ``frontier_short.png`` (the headline methods: the paper's IFM, the best data-free repair of IFM and of
    k-means, distillation, the real-data references) in ``out``."""
    by_label = {m.label: m for m in compared}
    rows = [[label, by_label[label].family, *(r.get(f) for f in FIELDS[2:-2]), by_label[label].uses_data,
             by_label[label].headline] for label, records in curves.items() for r in records]
    out = Path(out)
    table = write_csv(out / "frontier.csv", FIELDS, rows)
    styles = frontier_styles(compared)
    figure = plot_frontier(curves, out / "frontier.png", styles, title=title)
    short = {label: records for label, records in curves.items() if by_label[label].headline}
    plot_frontier(short, out / "frontier_short.png", styles, title=title, legend_below=True)
    return table, figure, out / "frontier_short.png"


def format_frontier(curves: dict[str, list[dict]], budgets: Sequence[float]) -> str:
    """Accuracy (and params %) per method and budget, as a Markdown table."""
    head = "| method | " + " | ".join(f"{b:g} %" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for label, records in curves.items():
        by_budget = {r["target_params"]: r for r in records}
        cells = []
        for b in budgets:
            r = by_budget.get(float(b))
            if r is None or r.get("acc_after") is None:
                cells.append("–")
                continue
            spread = f" ± {r['acc_after_std']:.1f}" if r.get("acc_after_std") is not None else ""
            cells.append(f"{r['acc_after']:.2f}{spread} ({r['params_pct']:.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
