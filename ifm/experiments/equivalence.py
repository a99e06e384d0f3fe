"""Are merged features functionally equivalent? Linear CKA, linear stitching and within-cluster correlation
between a CIFAR VGG and its IFM-merged version, layer by layer.

The paper calls features functionally equivalent when an invertible linear map relates them and the
outputs agree (Sec. 2-3), and argues that similarity measures such as CKA are too vague for that. This
module measures both on IFM's own output, at the feature maps Z of every merged layer (after its ReLU):

* linear CKA (Kornblith et al. 2019) of the two models' features on test images, feature maps pooled
  (spatial mean per channel), accumulated in batches (never all activations at once); optionally the
  debiased estimator (unbiased HSIC, Song et al. 2012);
* linear stitching (model stitching, as in Bansal et al. 2021 and Dr. Frankenstein): the original
  network up to that layer, a 1x1 convolution with bias fitted by least squares from the original's
  features to the merged features on training images (every pixel a sample), then the merged network's
  top; its test accuracy against the merged model's own. And the reverse (merged bottom, original top);
* for the equivalence classes IFM found, the mean pairwise Pearson correlation of the pooled original
  features inside each merged cluster, against that of random pairs of the same layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import IFMError

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------ linear CKA
class LinearCKA:
    """Linear CKA of two representations ``(n, d1)`` and ``(n, d2)`` fed in batches of rows (float64 sums
    of feature-space products only: memory O(d^2), whatever n)."""

    def __init__(self, debiased: bool = False):
        self.debiased = debiased
        self.n = 0
        self.sums: dict[str, Tensor] = {}

    def _add(self, name: str, value: Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs as many rows in both representations, got {x.shape[0]} and {y.shape[0]}")
        x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
        self.n += x.shape[0]
        self._add("xx", x.T @ x)
        self._add("yy", y.T @ y)
        self._add("xy", x.T @ y)
        self._add("sx", x.sum(0))
        self._add("sy", y.sum(0))
        if self.debiased:
            nx, ny = (x * x).sum(1), (y * y).sum(1)
            for name, value in (("nx", nx.sum()), ("ny", ny.sum()), ("nxx", (nx * nx).sum()),
                                ("nyy", (ny * ny).sum()), ("nxy", (nx * ny).sum()), ("x_nx", x.T @ nx),
                                ("x_ny", x.T @ ny), ("y_ny", y.T @ ny), ("y_nx", y.T @ nx)):
                self._add(name, value)

    def _hsic(self, a: str, b: str) -> Tensor:
        """HSIC of the two linear kernels named by their letters ('x' or 'y'), up to a common factor."""
        s, n = self.sums, self.n
        cross = s[a + b] if a + b in s else s[b + a].T
        if not self.debiased:  # centred: ||Xc^T Yc||_F^2 with Xc^T Yc = X^T Y - n mx my^T
            centred = cross - torch.outer(s["s" + a], s["s" + b]) / n
            return (centred * centred).sum()
        if n < 4:
            raise ValueError("the debiased CKA needs at least 4 samples")
        tr = (cross * cross).sum() - s["n" + a + b if "n" + a + b in s else "n" + b + a]
        one_k = s["s" + a] @ s["s" + a] - s["n" + a]
        one_l = s["s" + b] @ s["s" + b] - s["n" + b]
        kl = (s["s" + a] @ cross @ s["s" + b] - s["s" + a] @ s[f"{a}_n{b}"] - s["s" + b] @ s[f"{b}_n{a}"]
              + s["n" + a + b if "n" + a + b in s else "n" + b + a])
        return (tr + one_k * one_l / ((n - 1) * (n - 2)) - 2 * kl / (n - 2)) / (n * (n - 3))

    def value(self) -> float:
        """CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))."""
        if self.n == 0:
            raise ValueError("no samples")
        denominator = (self._hsic("x", "x") * self._hsic("y", "y")).sqrt()
        return float(self._hsic("x", "y") / denominator) if denominator > 0 else float("nan")


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA of two representations with one row per sample."""
    cka = LinearCKA(debiased)
    cka.update(x, y)
    return cka.value()


# ------------------------------------------------------------------------------------ VGG layers
@dataclass(frozen=True)
class Boundary:
    """Where a merged layer's feature maps Z are: after ``features[:index]`` of a CIFAR VGG."""

    layer: str  # the conv, e.g. features.24
    group: str  # its channel group, e.g. perm_features.24
    index: int  # features[:index] ends with the ReLU after the conv


def vgg_boundaries(model: nn.Module, groups: Sequence) -> list[Boundary]:
    """The feature maps of every merged conv of a CIFAR VGG (``features`` + ``classifier``)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise IFMError("the equivalence measurement splits CIFAR VGGs (features + one Linear classifier); "
                       "use --arch VGG11/13/16/19")
    boundaries = []
    for group in groups:
        conv = int(group.layer.split(".")[1])
        relu = next(k for k in range(conv + 1, len(features)) if isinstance(features[k], nn.ReLU))
        boundaries.append(Boundary(group.layer, group.name, relu + 1))
    return boundaries


def bottom(model: nn.Module, index: int, x: Tensor) -> Tensor:
    return model.features[:index](x)


def top(model: nn.Module, index: int, z: Tensor) -> Tensor:
    return model.classifier(torch.flatten(model.features[index:](z), 1))


def all_features(model: nn.Module, boundaries: Sequence[Boundary], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """The feature maps at every boundary and the logits, in one forward pass."""
    out, z, start = [], x, 0
    for b in boundaries:
        z = model.features[start:b.index](z)
        out.append(z)
        start = b.index
    return out, top(model, start, z)


# ------------------------------------------------------------------------------------ stitching
class StitchFit:
    """Least squares for a 1x1 convolution with bias from ``source`` to ``target`` feature maps (every pixel
    of every image a sample), accumulated in batches."""

    def __init__(self):
        self.zz: Tensor | None = None
        self.zt: Tensor | None = None

    def update(self, source: Tensor, target: Tensor) -> None:
        z = source.permute(0, 2, 3, 1).reshape(-1, source.shape[1]).double()
        z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], 1)
        t = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]).double()
        zz, zt = z.T @ z, z.T @ t
        self.zz = zz if self.zz is None else self.zz + zz
        self.zt = zt if self.zt is None else self.zt + zt

    def solve(self, ridge: float = 1e-8) -> nn.Conv2d:
        """The fitted map as a 1x1 ``nn.Conv2d`` (a tiny ridge, relative to the mean diagonal, keeps dead
        channels from making the system singular)."""
        d = self.zz.shape[0]
        regular = self.zz + ridge * self.zz.diagonal().mean() * torch.eye(d, dtype=self.zz.dtype)
        w = torch.linalg.solve(regular, self.zt)  # (d_in + 1, d_out)
        conv = nn.Conv2d(d - 1, w.shape[1], 1)
        with torch.no_grad():
            conv.weight.copy_(w[:-1].T.reshape(w.shape[1], d - 1, 1, 1))
            conv.bias.copy_(w[-1])
        return conv


class Stitched(nn.Module):
    """``lower`` up to a boundary, a 1x1 conv, then ``upper`` from the same boundary."""

    def __init__(self, lower: nn.Module, upper: nn.Module, index: int, stitch: nn.Conv2d):
        super().__init__()
        self.lower, self.upper, self.index, self.stitch = lower, upper, index, stitch

    def forward(self, x: Tensor) -> Tensor:
        return top(self.upper, self.index, self.stitch(bottom(self.lower, self.index, x)))


# ------------------------------------------------------------------------------------ correlation
def cluster_correlation(covariance: Tensor, clusters: Iterable[Sequence[int]]) -> float | None:
    """Mean over clusters of the mean pairwise Pearson correlation inside each, over the features that vary
    (a dead feature has no correlation); clusters with fewer than two such features are left out."""
    variance = covariance.diagonal()
    live = variance > 1e-12 * variance.max().clamp(min=1e-300)
    std = variance.clamp(min=1e-300).sqrt()
    corr = covariance / torch.outer(std, std)
    values = []
    for cluster in clusters:
        idx = torch.tensor([c for c in cluster if live[c]], dtype=torch.long)
        if len(idx) > 1:
            block = corr[idx][:, idx]
            values.append((block.sum() - block.diagonal().sum()) / (len(idx) * (len(idx) - 1)))
    return float(torch.stack(values).mean()) if values else None


def random_pair_correlation(covariance: Tensor, pairs: int = 2000, seed: int = 0) -> float:
    """Mean Pearson correlation of random pairs of distinct features (the baseline for the clusters)."""
    d = covariance.shape[0]
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, d, (pairs,), generator=gen)
    j = (i + torch.randint(1, d, (pairs,), generator=gen)) % d
    std = covariance.diagonal().clamp(min=1e-300).sqrt()
    return float((covariance[i, j] / (std[i] * std[j])).mean())


# ------------------------------------------------------------------------------------ the measurement
@dataclass
class LayerEquivalence:
    """One merged layer of one β: similarity, stitching and cluster correlation (accuracies in %)."""

    beta: float
    layer: str
    features_original: int
    features_merged: int
    cka: float
    stitched_acc: float  # original bottom -> fitted map -> merged top
    reverse_stitched_acc: float  # merged bottom -> fitted map -> original top
    merged_acc: float
    original_acc: float
    cluster_correlation: float | None  # mean pairwise correlation inside IFM's clusters (original features)
    random_pair_correlation: float
    merged_clusters: int  # clusters of two or more original features


def _batches(data, batch_size: int, device, normalize) -> Iterable[tuple[Tensor, Tensor]]:
    from .evaluate import tensor_batches
    mean, std = normalize or (None, None)
    return tensor_batches(data, batch_size, device, mean, std)


@torch.no_grad()
def measure_equivalence(original: nn.Module, merged: dict[float, tuple[nn.Module, dict]], groups: Sequence,
                        test_data, train_data, device: torch.device | str = "cpu", normalize=None,
                        batch_size: int = 250, debiased: bool = False, progress: bool = True
                        ) -> list[LayerEquivalence]:
    """Every merged layer of every β: ``merged`` maps β to (merged model, its clusters by group name)."""
    from tqdm.auto import tqdm
    original = original.to(device).eval()
    models = {beta: model.to(device).eval() for beta, (model, _) in merged.items()}
    bounds = vgg_boundaries(original, groups)
    ckas = {(beta, k): LinearCKA(debiased) for beta in models for k in range(len(bounds))}
    moments = [LinearCKA() for _ in bounds]  # the original's pooled features with themselves: covariances
    fits = {(beta, k, way): StitchFit() for beta in models for k in range(len(bounds)) for way in ("fwd", "rev")}
    # least squares on training images: both models' feature maps at every boundary
    for x, _ in tqdm(_batches(train_data, batch_size, device, normalize), desc="fitting stitches",
                     total=-(-len(train_data) // batch_size), leave=False, disable=not progress):
        feats, _ = all_features(original, bounds, x)
        for beta, model in models.items():
            merged_feats, _ = all_features(model, bounds, x)
            for k, (a, b) in enumerate(zip(feats, merged_feats)):
                fits[beta, k, "fwd"].update(a.cpu(), b.cpu())
                fits[beta, k, "rev"].update(b.cpu(), a.cpu())
    stitches = {key: fit.solve() for key, fit in fits.items()}
    correct = {name: 0 for name in ["original", *models, *stitches]}
    seen = 0
    for x, y in tqdm(_batches(test_data, batch_size, device, normalize), desc="CKA and stitched accuracy",
                     total=-(-len(test_data) // batch_size), leave=False, disable=not progress):
        feats, logits = all_features(original, bounds, x)
        correct["original"] += int((logits.argmax(1) == y).sum())
        pooled = [f.mean((2, 3)).cpu() for f in feats]
        for k, p in enumerate(pooled):
            moments[k].update(p, p)
        for beta, model in models.items():
            merged_feats, logits = all_features(model, bounds, x)
            correct[beta] += int((logits.argmax(1) == y).sum())
            for k, (a, b) in enumerate(zip(feats, merged_feats)):
                ckas[beta, k].update(pooled[k], b.mean((2, 3)).cpu())
                fwd = top(model, bounds[k].index, stitches[beta, k, "fwd"].to(device)(a))
                rev = top(original, bounds[k].index, stitches[beta, k, "rev"].to(device)(b))
                correct[beta, k, "fwd"] += int((fwd.argmax(1) == y).sum())
                correct[beta, k, "rev"] += int((rev.argmax(1) == y).sum())
        seen += len(y)
    acc = {name: 100.0 * c / seen for name, c in correct.items()}
    rows = []
    for beta, (model, clusters) in merged.items():
        for k, b in enumerate(bounds):
            s = moments[k].sums
            covariance = (s["xx"] - torch.outer(s["sx"], s["sx"]) / moments[k].n) / (moments[k].n - 1)
            group_clusters = clusters.get(b.group, [])
            rows.append(LayerEquivalence(
                beta, b.layer, s["sx"].numel(), ckas[beta, k].sums["sy"].numel(), ckas[beta, k].value(),
                acc[beta, k, "fwd"], acc[beta, k, "rev"], acc[beta], acc["original"],
                cluster_correlation(covariance, group_clusters), random_pair_correlation(covariance),
                sum(len(c) > 1 for c in group_clusters)))
    return rows


def plot_equivalence(rows: Sequence[LayerEquivalence], path, title: str = ""):
    """Two panels per layer: linear CKA, and stitched accuracy (solid: original bottom -> merged top;
    dashed: merged bottom -> original top; dotted: the merged model's own accuracy), one colour per β."""
    from .plots import include_with_margin, pyplot, save_figure
    plt = pyplot()
    fig, (ax_cka, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.5))
    layers = list(dict.fromkeys(r.layer for r in rows))
    xs = range(1, len(layers) + 1)
    for beta in dict.fromkeys(r.beta for r in rows):
        mine = [r for r in rows if r.beta == beta]
        line, = ax_cka.plot(xs, [r.cka for r in mine], marker="o", label=f"β={beta:g}")
        color = line.get_color()
        ax_acc.plot(xs, [r.stitched_acc for r in mine], marker="o", color=color,
                    label=f"β={beta:g}: original bottom → merged top")
        ax_acc.plot(xs, [r.reverse_stitched_acc for r in mine], marker="x", linestyle="--", color=color,
                    label=f"β={beta:g}: merged bottom → original top")
        ax_acc.axhline(mine[0].merged_acc, color=color, linestyle=":", linewidth=1,
                       label=f"β={beta:g}: merged model {mine[0].merged_acc:.1f} %")
    ax_acc.axhline(rows[0].original_acc, color="black", linestyle=":", linewidth=1,
                   label=f"original model {rows[0].original_acc:.1f} %")
    include_with_margin(ax_acc, [v for r in rows for v in (r.stitched_acc, r.reverse_stitched_acc, r.merged_acc,
                                                           r.original_acc)])
    for ax in (ax_cka, ax_acc):
        ax.set_xticks(list(xs), layers, rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    ax_cka.set(ylabel="linear CKA (pooled feature maps)", title="Similarity of original and merged features")
    ax_acc.set(ylabel="test accuracy (%)", title="Linear stitching at each layer")
    ax_cka.legend(fontsize=8)
    ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
