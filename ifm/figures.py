"""The paper's figures and tables, computed from result records, weights and data.

Every function returns plain data (lists, dicts) and, where asked, writes a PNG and a CSV/JSON next
to it; ``scripts/reproduce.py`` is the command line.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .archs import channel_groups, model_for_state_dict
from .io import write_csv
from .merge import IterativeMerger, iterative_feature_merging
from .permute import permute_channels
from .plots import pyplot, save_figure

Tensor = torch.Tensor

#: Table 2 of the paper: seconds per IFM iteration on one RTX 2080Ti (mean ± std of 100 iterations).
PAPER_TABLE2 = {("cifar10", "VGG13"): "0.018 ± 0.003", ("cifar10", "VGG16"): "0.027 ± 0.005",
                ("cifar10", "ResNet18"): "0.015 ± 0.003", ("cifar10", "ResNet50"): "0.127 ± 0.012",
                ("imagenet", "vgg13"): "0.802 ± 0.053", ("imagenet", "vgg16"): "0.814 ± 0.054",
                ("imagenet", "vgg19"): "0.822 ± 0.045", ("imagenet", "resnet18"): "0.015 ± 0.002",
                ("imagenet", "resnet50"): "0.127 ± 0.010"}


# ------------------------------------------------------------------------------------ Fig. 3(b)
def largest_beta_within(records: Sequence[dict], fraction: float = 0.95) -> dict | None:
    """The record with the largest β whose accuracy stays above ``fraction`` of the original (Fig. 3(b))."""
    ok = [r for r in records if r.get("acc_after") is not None and r["acc_after"] >= fraction * r["acc_before"]]
    return max(ok, key=lambda r: r["beta"]) if ok else None


def plot_accuracy_vs_count(choices: Mapping[str, dict], path: str | Path) -> Path:
    """Fig. 3(b): accuracy against the number of parameters, before (hollow) and after merging."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in choices.items():
        line, = ax.plot([r["params_before"] / 1e6, r["params_after"] / 1e6], [r["acc_before"], r["acc_after"]],
                        linestyle=":", marker="o", label=f"{label} (β={r['beta']:g})")
        ax.plot([r["params_before"] / 1e6], [r["acc_before"]], marker="o", markerfacecolor="white",
                color=line.get_color())
    ax.set(xlabel="parameters (millions)", ylabel="test accuracy (%)",
           title="largest β keeping ≥95% of the original accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Fig. 5(a)
def plot_feature_complexity(widths_by_model: Mapping[str, Mapping[str, int]], path: str | Path, beta: float) -> Path:
    """Fig. 5(a): merged width of every layer, one line per model; also a CSV beside the PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = []
    for label, widths in widths_by_model.items():
        ax.plot(range(1, len(widths) + 1), list(widths.values()), marker="o", label=label)
        rows += [(label, k, name, w) for k, (name, w) in enumerate(widths.items(), start=1)]
    ax.set(xlabel="layer", ylabel="feature complexity (merged width)", title=f"feature complexity at β={beta:g}")
    ax.grid(alpha=0.3)
    ax.legend()
    write_csv(Path(path).with_suffix(".csv"), ["model", "layer", "group", "width"], rows)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Fig. 2(a), 7
def normalized_distances(state_dict: Mapping[str, Tensor], arch: str, layers: Sequence[int] | None = None
                         ) -> dict[str, Tensor]:
    """Eq. 6 distance matrices of the chosen groups (indices into the group list), divided by their max."""
    groups = channel_groups(arch, state_dict)
    merger = IterativeMerger(state_dict, groups, device="cpu")
    chosen = range(len(groups)) if layers is None else layers
    out = {}
    for gi in chosen:
        dist = merger.distances(gi)
        out[groups[gi].name] = (dist / dist.max().clamp(min=1e-300)).float()
    return out


def plot_heatmaps(matrices: Mapping[str, Tensor], path: str | Path, columns: int = 4) -> Path:
    """One heatmap per layer (Fig. 2(a) for one layer, Fig. 7 for the first 12)."""
    plt = pyplot()
    n = len(matrices)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{name} ({matrix.shape[0]} features)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("normalised Eq. 6 distances between features")
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


def plot_interpolation(curves: Sequence[dict], path: str | Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curves:
        line, = ax.plot(c["lambdas"], c["equivalent"], marker="o",
                        label=f"β={c['beta']:g}: equivalent features ({c['moved_features']} moved)")
        ax.plot(c["lambdas"], c["random"], linestyle="--", marker="x", color=line.get_color(),
                label=f"β={c['beta']:g}: random features")
    ax.set(xlabel="λ", ylabel="test accuracy (%)", title="interpolating θ and π(θ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ Table 2
def time_per_iteration(state_dict: Mapping[str, Tensor], arch: str, beta: float, device: str) -> dict:
    """Our merge (total and per outer iteration) and one naive iteration (a full distance pass)."""
    groups = channel_groups(arch, state_dict)
    start = time.perf_counter()
    merger = IterativeMerger(state_dict, groups, device=device)
    naive_iteration = time.perf_counter() - start  # every naive iteration recomputes all of this
    result = merger.run(beta)
    total = time.perf_counter() - start
    return {"merges": result.n_merges, "iterations": result.iterations, "total_s": total,
            "ours_per_iteration_s": total / max(result.iterations, 1), "naive_per_iteration_s": naive_iteration}


# ------------------------------------------------------------------------------------ Fig. 5(b), 8, 9
class _GuidedReLU(nn.Module):
    """ReLU whose backward pass lets only positive gradients through positive inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return _GuidedReLUFunction.apply(x)


class _GuidedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


def guided_backprop(model: nn.Module, layer: str, channels: Sequence[int], images: Tensor) -> Tensor:
    """Input gradients of the summed activations of ``channels`` at module ``layer`` (other features'
    gradients set to zero), through guided ReLUs. Returns ``(N, 3, H, W)``."""
    import copy
    guided = copy.deepcopy(model).eval()
    for name, module in list(guided.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, _GuidedReLU())
    captured = {}
    handle = guided.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    x = images.clone().requires_grad_(True)
    guided(x)
    handle.remove()
    out = captured["out"]
    mask = torch.zeros(out.shape[1], dtype=out.dtype)
    mask[list(channels)] = 1.0
    (out * mask.view(1, -1, 1, 1)).clamp(min=0).sum().backward()
    return x.grad.detach()


def plot_guided_grid(images: Tensor, maps: Sequence[tuple[str, Tensor]], path: str | Path) -> Path:
    """Rows: the images, then one row per group of equivalent features."""
    plt = pyplot()
    n = images.shape[0]
    fig, axes = plt.subplots(len(maps) + 1, n, figsize=(1.6 * n, 1.7 * (len(maps) + 1)), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy())
    for i, (label, grads) in enumerate(maps, start=1):
        for j in range(n):
            g = grads[j]
            g = (g - g.min()) / (g.max() - g.min()).clamp(min=1e-12)
            axes[i, j].imshow(g.permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(label, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)

