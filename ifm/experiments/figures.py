"""The paper's figures and tables, computed from result records, weights and data.

Every function returns plain data (lists, dicts) and, where asked, writes a PNG and a CSV/JSON next
to it; ``scripts/reproduce.py`` is the command line.
"""
from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..architectures import model_for_state_dict
from ..discovery import channel_groups
from .io import write_csv
from ..merge import IterativeMerger, distance_matrices, iterative_feature_merging
from ..permute import permute_channels
from .plots import pyplot, save_figure

Tensor = torch.Tensor

#: Table 2 of the paper: seconds per IFM iteration on one RTX 2080Ti (mean ± std of 100 iterations).
PAPER_TABLE2 = {("cifar10", "VGG13"): "0.018 ± 0.003", ("cifar10", "VGG16"): "0.027 ± 0.005",
                ("cifar10", "ResNet18"): "0.015 ± 0.003", ("cifar10", "ResNet50"): "0.127 ± 0.012",
                ("imagenet", "vgg13"): "0.802 ± 0.053", ("imagenet", "vgg16"): "0.814 ± 0.054",
                ("imagenet", "vgg19"): "0.822 ± 0.045", ("imagenet", "resnet18"): "0.015 ± 0.002",
                ("imagenet", "resnet50"): "0.127 ± 0.010"}


# ------------------------------------------------------------------------------------ curves
def curve_fields(spec_type: type | None = None) -> tuple[str, ...]:
    """Record fields that change a result: records differing in any of them belong to different curves (the
    sweep's identity of a run, the checkpoint by its digest)."""
    from .sweep import same_run_fields
    return tuple(f for f in same_run_fields(*(() if spec_type is None else (spec_type,))) if f != "checkpoint")


CURVE_FIELDS = curve_fields()
_DESCRIBE = {"method": lambda v: {"ifm": "IFM", "l1": "L1 pruning", "random": "random pruning",
                                  "kmeans": "k-means"}.get(v, v),
             "bn_correction": lambda v: f"correction {v}",
             "synthetic_bn": lambda v: f"BN on {v} synthetic images" if v not in ("0", "None") else "no synthetic BN",
             "target_params": lambda v: f"budget {v} %",
             "bn_mode": lambda v: f"BN {v}", "recalibrate_bn": lambda v: f"BN recalibrated on {v}" if v not in
             ("0", "None") else "no BN recalibration", "order": lambda v: f"order {v}",
             "eval_samples": lambda v: f"{v} test images", "seeds": lambda v: f"{v} seeds"}


def checkpoint_label(record: Mapping) -> str:
    """A readable name for a record's weights: torchvision's weights name, a training run's folder and
    epoch (``run/model_epoch149``), or the file name."""
    checkpoint = str(record.get("checkpoint", "?"))
    if checkpoint.startswith("torchvision:"):
        return checkpoint.split(":", 1)[1]
    path = Path(checkpoint)
    return f"{path.parent.parent.name}/{path.stem}" if path.parent.name == "params" else path.stem


def width_factor(record: Mapping) -> float | None:
    """The channel multiplier of a CIFAR model's record (its original widths over the default ones)."""
    if record.get("dataset") != "cifar10" or not record.get("original_widths"):
        return None
    default = _default_widths(record["model"])
    first = next(iter(record["original_widths"]))
    return record["original_widths"][first] / default[first] if first in default else None


@lru_cache(maxsize=None)
def _default_widths(arch: str) -> dict[str, int]:
    from ..architectures import get_architecture
    return {g.name: g.width for g in channel_groups(arch, get_architecture(arch).build(10).state_dict())}


def curves_by_setting(records: Sequence[dict], spec_type: type | None = None) -> dict[str, list[dict]]:
    """Evaluated records grouped into curves by every setting that changes a result, sorted by β (the last
    record of a β wins). Labels name the model and its width, then what tells curves apart: the checkpoint
    (when a model has several), the method, BN mode, recalibration, order, evaluated images..."""
    from .run import RunSpec
    from .sweep import record_value
    fields = curve_fields(spec_type)
    groups: dict[tuple, dict[float, dict]] = {}
    for r in records:
        if r.get("acc_after") is None:
            continue
        key = tuple(str(r.get(f, r.get("checkpoint")) if f == "checkpoint_digest" else record_value(r, f, spec_type
                                                                                                     or RunSpec))
                    for f in fields)
        groups.setdefault(key, {})[r["beta"]] = r
    varying = {f for i, f in enumerate(fields) if len({k[i] for k in groups}) > 1}
    per_model: dict[str, set] = {}
    for key in groups:
        per_model.setdefault(key[0], set()).add(key[1])
    labels: dict[tuple, str] = {}
    for key, by_beta in groups.items():
        first = next(iter(by_beta.values()))
        factor = width_factor(first)
        parts = [key[0] + (f" ×{factor:g}" if factor and abs(factor - 1) > 1e-9 else "")]
        if len(per_model[key[0]]) > 1:
            parts.append(checkpoint_label(first))
        parts += [_DESCRIBE.get(f, lambda v, f=f: f"{f} {v}")(key[i]) for i, f in enumerate(fields)
                  if f in varying and f not in ("model", "checkpoint_digest", "data_root")]
        if "data_root" in varying:
            parts.append(f"data {Path(key[fields.index('data_root')]).name}")
        labels[key] = ", ".join(parts)
    curves: dict[str, list[dict]] = {}
    for key, label in labels.items():
        if list(labels.values()).count(label) > 1:  # same name, other weights: tell them apart by digest
            label = f"{label} [{key[1][-12:]}]"
        while label in curves:
            label += "'"
        curves[label] = sorted(groups[key].values(), key=lambda r: r["beta"])
    return curves


def evaluated_subset(records: Sequence[dict]) -> str:
    """'CIFAR-10, 10,000 test images' (or several sizes) for titles."""
    datasets = sorted({r.get("dataset", "?") for r in records})
    sizes = sorted({r["eval_samples"] for r in records if r.get("eval_samples")})
    name = ", ".join({"cifar10": "CIFAR-10", "imagenet": "ImageNet val"}.get(d, d) for d in datasets)
    return name + (", " + " / ".join(f"{n:,}" for n in sizes) + " test images" if sizes else "")


# ------------------------------------------------------------------------------------ Fig. 3(b)
def largest_beta_within(records: Sequence[dict], fraction: float = 0.95) -> dict | None:
    """The record with the largest β whose accuracy stays above ``fraction`` of the original (Fig. 3(b))."""
    ok = [r for r in records if r.get("acc_after") is not None and r["acc_after"] >= fraction * r["acc_before"]]
    return max(ok, key=lambda r: r["beta"]) if ok else None


def plot_accuracy_vs_count(choices: Mapping[str, dict], path: str | Path, subtitle: str = "") -> Path:
    """Fig. 3(b): accuracy against the number of parameters, before (hollow) and after merging; ``subtitle`` (a
    second title line) names the setting, e.g. the BN mode and the scale."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in choices.items():
        line, = ax.plot([r["params_before"] / 1e6, r["params_after"] / 1e6], [r["acc_before"], r["acc_after"]],
                        linestyle=":", marker="o", label=f"{label} (β={r['beta']:g})")
        ax.plot([r["params_before"] / 1e6], [r["acc_before"]], marker="o", markerfacecolor="white",
                color=line.get_color())
    ax.plot([], [], "o", color="gray", markerfacecolor="white", label="hollow: original model")
    ax.plot([], [], "o", color="gray", label="filled: after merging")
    subset = evaluated_subset(list(choices.values()))
    ax.set(xlabel="parameters (millions)", ylabel="test accuracy (%)",
           title=f"Largest β keeping ≥95% of the original accuracy ({subset})" + (f"\n{subtitle}" if subtitle else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Fig. 5(a)
def plot_feature_complexity(records_by_model: Mapping[str, Mapping], path: str | Path, beta: float,
                            subtitle: str = "") -> Path:
    """Fig. 5(a): merged width of every layer, one line per model (records with ``widths`` and
    ``original_widths``), the original widths grey and dashed; also a CSV beside the PNG. ``subtitle``: as in
    :func:`plot_accuracy_vs_count`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = []
    for label, record in records_by_model.items():
        widths, original = record["widths"], record.get("original_widths") or {}
        layers = range(1, len(widths) + 1)
        ax.plot(layers, list(widths.values()), marker="o", label=label)
        if original:
            ax.plot(layers, [original[k] for k in widths], linestyle="--", linewidth=0.8, color="gray")
        rows += [(label, k, name, w, original.get(name)) for k, (name, w) in enumerate(widths.items(), start=1)]
    ax.plot([], [], color="gray", linestyle="--", linewidth=0.8, label="original width")
    ax.set(xlabel="layer", ylabel="feature complexity (merged width)",
           title=f"Feature complexity of every layer at β={beta:g}" + (f"\n{subtitle}" if subtitle else ""))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    write_csv(Path(path).with_suffix(".csv"), ["model", "layer", "group", "width", "original_width"], rows)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Fig. 2(a), 7
def normalized_distances(state_dict: Mapping[str, Tensor], arch: str, layers: Sequence[int] | None = None
                         ) -> dict[str, Tensor]:
    """Eq. 6 distance matrices of the chosen groups (indices into the group list), divided by their max."""
    matrices = distance_matrices(state_dict, channel_groups(arch, state_dict), layers)
    return {name: (dist / dist.max().clamp(min=1e-300)).float() for name, dist in matrices.items()}


def plot_heatmaps(matrices: Mapping[str, Tensor], path: str | Path, columns: int = 4, title: str = "") -> Path:
    """One heatmap per layer (Fig. 2(a) for one layer, Fig. 7 for the first 12), keyed by layer name."""
    plt = pyplot()
    n = len(matrices)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    size = 5.0 if n == 1 else 3.6
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.6, size * rows), squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{name} ({matrix.shape[0]} features)", fontsize=10)
        ax.set(xlabel="feature n", ylabel="feature m")
        fig.colorbar(image, ax=ax, fraction=0.046, label="D_mn / max D")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Normalised Eq. 6 distances between features" + (f"\n{title}" if title else ""))
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Fig. 2(b)
def equivalence_permutations(clusters: Mapping[str, Sequence[Sequence[int]]], widths: Mapping[str, int]
                             ) -> tuple[dict[str, Tensor], dict[str, int]]:
    """π that rotates the channels inside every merged cluster (swapping equivalent features), and
    how many channels it moves in each group."""
    perms, moved = {}, {}
    for name, groups in clusters.items():
        perm = torch.arange(widths[name])
        moved[name] = 0
        for cluster in groups:
            if len(cluster) > 1:
                members = torch.tensor(cluster)
                perm[members] = members.roll(1)
                moved[name] += len(cluster)
        perms[name] = perm
    return perms, moved


def random_permutations(widths: Mapping[str, int], moved_per_group: Mapping[str, int], seed: int) -> dict[str, Tensor]:
    """π moving the same number of channels per group, chosen at random (the dashed curves)."""
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    for name, width in widths.items():
        perm = torch.arange(width)
        k = moved_per_group.get(name, 0)
        if k > 1:
            chosen = torch.randperm(width, generator=gen)[:k]
            perm[chosen] = chosen.roll(1)
        perms[name] = perm
    return perms


def interpolation_curve(model: nn.Module, theta: Mapping[str, Tensor], permuted: Mapping[str, Tensor],
                        lambdas: Sequence[float], evaluate: Callable[[nn.Module], float]) -> list[float]:
    """Accuracy of ``(1-λ)θ + λπ(θ)`` for each λ (floating tensors interpolated, counters kept)."""
    accuracies = []
    for lam in lambdas:
        mixed = {k: ((1 - lam) * v + lam * permuted[k]) if v.is_floating_point() else v for k, v in theta.items()}
        model.load_state_dict(mixed)
        accuracies.append(evaluate(model))
    return accuracies


def fig2b(state_dict: Mapping[str, Tensor], arch: str, beta: float, lambdas: Sequence[float],
          evaluate: Callable[[nn.Module], float], seed: int = 0) -> dict:
    """Solid: π swaps features IFM finds equivalent at ``beta``; dashed: random π of the same size."""
    groups = channel_groups(arch, state_dict)
    result = iterative_feature_merging(state_dict, groups, beta=beta, device="cpu")
    widths = result.original_widths
    perms, moved_per_group = equivalence_permutations(result.clusters, widths)
    model = model_for_state_dict(arch, state_dict)
    equivalent = interpolation_curve(model, state_dict, permute_channels(state_dict, groups, perms), lambdas, evaluate)
    randoms = random_permutations(widths, moved_per_group, seed)
    random_curve = interpolation_curve(model, state_dict, permute_channels(state_dict, groups, randoms),
                                       lambdas, evaluate)
    return {"beta": beta, "lambdas": list(lambdas), "moved_features": sum(moved_per_group.values()),
            "equivalent": equivalent,
            "random": random_curve}


def plot_interpolation(curves: Sequence[dict], path: str | Path, title: str = "interpolating θ and π(θ)") -> Path:
    """Fig. 2(b): accuracy along λ, solid for equivalent features, dashed for random ones."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for c in curves:
        line, = ax.plot(c["lambdas"], c["equivalent"], marker="o",
                        label=f"β={c['beta']:g}: equivalent features ({c['moved_features']} moved)")
        ax.plot(c["lambdas"], c["random"], linestyle="--", marker="x", color=line.get_color(),
                label=f"β={c['beta']:g}: random features")
    ax.set(xlabel="λ", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Table 2
def time_per_iteration(state_dict: Mapping[str, Tensor], arch: str, beta: float, device: str,
                       repeats: int = 3) -> dict:
    """Our merge, timed ``repeats`` times after a warm-up (the compiled kernels loaded): seconds per outer
    iteration and per merge, mean and standard deviation over the repeats; and one naive iteration (a full
    distance pass of every group, which the official loop recomputes at every iteration), the best one."""
    groups = channel_groups(arch, state_dict)
    iterative_feature_merging(state_dict, groups, beta=beta, max_ratio=0.01, device=device)  # warm-up
    totals, naive = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        merger = IterativeMerger(state_dict, groups, device=device)
        naive.append(time.perf_counter() - start)
        result = merger.run(beta)
        totals.append(time.perf_counter() - start)
    total = torch.tensor(totals, dtype=torch.float64)
    per_iteration = total / max(result.iterations, 1)
    per_merge = total / max(result.n_merges, 1)
    spread = (lambda t: t.std().item()) if repeats > 1 else (lambda t: 0.0)
    return {"merges": result.n_merges, "iterations": result.iterations, "total_s": total.mean().item(),
            "ours_per_iteration_s": per_iteration.mean().item(), "ours_per_iteration_std": spread(per_iteration),
            "ours_per_merge_s": per_merge.mean().item() if result.n_merges else None,
            "ours_per_merge_std": spread(per_merge) if result.n_merges else None,
            "naive_per_iteration_s": min(naive), "repeats": repeats}


# ------------------------------------------------------------------------------------ Fig. 5(b), 8, 9
class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward pass lets only positive gradients through positive inputs."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _GuidedReLUs(TorchFunctionMode):
    """Every ReLU called while active (``nn.ReLU`` modules, ``F.relu``, ``torch.relu``, in place or not)
    becomes a guided ReLU, so guided back-propagation holds for models that call ReLU functionally."""

    RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.RELUS:
            return _GuidedReLUFunction.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_backprop(model: nn.Module, layer: str, channels: Sequence[int], images: Tensor) -> Tensor:
    """Input gradients of the summed activations of ``channels`` at module ``layer`` (other features'
    gradients set to zero), through guided ReLUs. Returns ``(N, 3, H, W)``."""
    model = model.eval()
    captured = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    x = images.clone().requires_grad_(True)
    try:
        with _GuidedReLUs():
            model(x)
            out = captured["out"]
            mask = torch.zeros(out.shape[1], dtype=out.dtype)
            mask[list(channels)] = 1.0
            _GuidedReLUFunction.apply(out * mask.view(1, -1, 1, 1)).sum().backward()
    finally:
        handle.remove()
    return x.grad.detach()


def plot_guided_grid(images: Tensor, maps: Sequence[tuple[str, Tensor]], path: str | Path, title: str = "") -> Path:
    """Rows: the images, then one row per group of features (a group that is not activated by an image gets a
    grey panel saying so)."""
    plt = pyplot()
    n = images.shape[0]
    fig, axes = plt.subplots(len(maps) + 1, n, figsize=(1.6 * n + 1.2, 1.7 * (len(maps) + 1)), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0, 0].set_ylabel("image", fontsize=7)
    for i, (label, grads) in enumerate(maps, start=1):
        for j in range(n):
            g = grads[j]
            if float(g.max() - g.min()) <= 1e-12:  # the group never fires on this image: a neutral panel
                axes[i, j].imshow(torch.full(g.shape[1:], 0.5).numpy(), cmap="gray", vmin=0, vmax=1)
                axes[i, j].text(0.5, 0.5, "no activation", ha="center", va="center", fontsize=6,
                                transform=axes[i, j].transAxes)
                continue
            g = (g - g.min()) / (g.max() - g.min())
            axes[i, j].imshow(g.permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(label, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)

