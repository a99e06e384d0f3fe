"""The closest data-free peer's choice of channels (Model Folding, ICLR 2025), written for our channel groups.

Per group, k-means on each channel's concatenated weights (every member's slice: producer rows, biases, BN γ and β,
consumer columns; BN running statistics left out), with the same share of channels merged in every group. The
clusters are then merged by a merge rule (Model Folding: the mean rule) through :meth:`IterativeMerger.merge_partition`.

The clustering reaches the optima Model Folding's Hartigan k-means reaches: the vectors are first written in
coordinates of their own span (``n`` channels need at most ``n`` coordinates; every distance is kept), then
each of ``n_init`` runs starts from greedy k-means++ seeds, takes Lloyd steps until no label changes, and ends
with Hartigan's single-point moves (a point moves where that lowers the within-cluster sum of squares, which
Lloyd's local optima often still allow). The best run by that sum wins. ``scripts/bench_kmeans.py`` compares the
sum with scikit-learn's ``KMeans``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numba
import numpy as np
import torch

from .groups import ChannelGroup, channel_slices, split_segments

Tensor = torch.Tensor
RUNNING_STATS = (".running_mean", ".running_var", ".num_batches_tracked")


def kept_width(width: int, ratio: float) -> int:
    """The width IFM leaves with ``max_ratio`` = ``ratio`` when Eq. 9 never stops it (``ceil(width·ratio)`` merges),
    at least 1."""
    return max(1, width - math.ceil(width * ratio - 1e-12))


def weight_vectors(state_dict: Mapping[str, Tensor], group: ChannelGroup) -> np.ndarray:
    """``(width, d)``: each channel's slices of every member of the group (running statistics excluded)."""
    views = split_segments(state_dict, [group])
    parts = []
    for m in group.members:
        if m.key.endswith(RUNNING_STATS):
            continue
        parts.append(channel_slices(views[m.key].detach().double(), m.axis, group.width).numpy())
    return np.concatenate(parts, axis=1)


def span_coordinates(vectors: np.ndarray) -> np.ndarray:
    """``(n, r)`` coordinates of the rows of ``vectors`` (``r <= n``) with the same pairwise distances: the centred
    rows in an orthonormal basis of their span (from the eigenvectors of their Gram matrix)."""
    x = np.asarray(vectors, dtype=np.float64)
    centred = x - x.mean(axis=0)
    if centred.shape[1] <= centred.shape[0]:
        return np.ascontiguousarray(centred)
    values, vectors_ = np.linalg.eigh(centred @ centred.T)
    keep = values > values.max() * 1e-13 if values.max() > 0 else np.zeros(len(values), bool)
    return np.ascontiguousarray(vectors_[:, keep] * np.sqrt(values[keep]))


def _squared_distances(x: np.ndarray, sq: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n, k)`` squared distances by one matrix product (``|x|² − 2 x·c + |c|²``, clipped at 0)."""
    d = sq[:, None] - 2.0 * (x @ centroids.T) + (centroids ** 2).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def _greedy_plus_plus(x: np.ndarray, sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds, each the best of ``2 + log k`` candidates drawn by D² (greedy k-means++, as scikit-learn)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(n))]
    closest = np.maximum(sq - 2.0 * x @ x[chosen[0]] + sq[chosen[0]], 0.0)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point sits on a seed: any unused point will do
            candidates = rng.choice(np.setdiff1d(np.arange(n), chosen), 1)
        else:
            candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * total).clip(max=n - 1)
        distances = np.maximum(sq[None, :] - 2.0 * x[candidates] @ x.T + sq[candidates, None], 0.0)
        updated = np.minimum(closest[None, :], distances)
        best = int(np.argmin(updated.sum(axis=1)))
        chosen.append(int(candidates[best]))
        closest = updated[best]
    return x[chosen].copy()


def _lloyd(x: np.ndarray, sq: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd steps from ``centroids`` until no label changes (at most ``iterations``); returns the labels."""
    k = len(centroids)
    labels = np.full(len(x), -1)
    for _ in range(iterations):
        new = _squared_distances(x, sq, centroids).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]  # an empty cluster keeps its centroid
    return labels


@numba.njit(cache=True, nogil=True)
def _hartigan(x, labels, k, max_passes):  # pragma: no cover (compiled)
    """Hartigan's single-point moves, in place on ``labels``: point i leaves its cluster a (of n_a > 1 points) for
    the cluster b with the smallest n_b/(n_b+1)·|x_i − c_b|² when that is below n_a/(n_a−1)·|x_i − c_a|² (the sum
    of squares then falls by the difference). Passes over all points until none moves."""
    n, d = x.shape
    counts = np.zeros(k)
    centroids = np.zeros((k, d))
    for i in range(n):
        counts[labels[i]] += 1.0
        for c in range(d):
            centroids[labels[i], c] += x[i, c]
    for a in range(k):
        if counts[a] > 0:
            for c in range(d):
                centroids[a, c] /= counts[a]
    for _ in range(max_passes):
        moved = False
        for i in range(n):
            a = labels[i]
            if counts[a] <= 1.0:
                continue
            da = 0.0
            for c in range(d):
                diff = x[i, c] - centroids[a, c]
                da += diff * diff
            leave = counts[a] / (counts[a] - 1.0) * da
            best, best_cost = -1, leave * (1.0 - 1e-12)  # (a move must lower the sum by more than rounding)
            for b in range(k):
                if b == a:
                    continue
                db = 0.0
                for c in range(d):
                    diff = x[i, c] - centroids[b, c]
                    db += diff * diff
                    if counts[b] / (counts[b] + 1.0) * db >= best_cost:
                        break
                cost = counts[b] / (counts[b] + 1.0) * db
                if cost < best_cost:
                    best, best_cost = b, cost
            if best >= 0:
                for c in range(d):
                    centroids[a, c] = (centroids[a, c] * counts[a] - x[i, c]) / (counts[a] - 1.0)
                    centroids[best, c] = (centroids[best, c] * counts[best] + x[i, c]) / (counts[best] + 1.0)
                counts[a] -= 1.0
                counts[best] += 1.0
                labels[i] = best
                moved = True
        if not moved:
            break
    return labels


def within_cluster_sum_of_squares(vectors: np.ndarray, clusters: Sequence[Sequence[int]]) -> float:
    """Σ over clusters of the squared distances of its rows of ``vectors`` to their mean (k-means' objective)."""
    x = np.asarray(vectors, dtype=np.float64)
    return float(sum(((x[list(c)] - x[list(c)].mean(axis=0)) ** 2).sum() for c in clusters if len(c)))


def kmeans_clusters(vectors: np.ndarray, k: int, seed: int = 0, n_init: int = 10, iterations: int = 300
                    ) -> list[list[int]]:
    """``k`` non-empty clusters of the rows of ``vectors``: the best of ``n_init`` runs (greedy k-means++ seeds,
    Lloyd steps, Hartigan moves) by the within-cluster sum of squares. An empty cluster takes the point farthest
    from its centroid, so exactly ``k`` come back, each sorted, in the order of their first channel."""
    n = len(vectors)
    if k >= n:
        return [[i] for i in range(n)]
    x = span_coordinates(vectors)
    sq = (x ** 2).sum(axis=1)
    rng = np.random.default_rng(seed)
    best, best_sse = None, math.inf
    for _ in range(n_init):
        labels = _lloyd(x, sq, _greedy_plus_plus(x, sq, k, rng), iterations)
        labels = _fill_empty(x, labels, k)
        labels = _hartigan(x, labels.astype(np.int64), k, iterations)
        sse = within_cluster_sum_of_squares(x, _clusters_of(labels, k))
        if sse < best_sse:
            best, best_sse = labels, sse
    return sorted(_clusters_of(best, k))


def _fill_empty(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``labels`` with every empty cluster given the point farthest from its centroid (never emptying another)."""
    labels = labels.copy()
    for empty in sorted(set(range(k)) - set(labels.tolist())):
        sizes = np.bincount(labels, minlength=k)
        centroid_of = np.stack([x[labels == c].mean(axis=0) if sizes[c] else x[0] for c in range(k)])
        distance = ((x - centroid_of[labels]) ** 2).sum(axis=1)
        candidates = np.where(sizes[labels] > 1)[0]
        labels[candidates[np.argmax(distance[candidates])]] = empty
    return labels


def _clusters_of(labels: np.ndarray, k: int) -> list[list[int]]:
    return [sorted(np.where(labels == c)[0].tolist()) for c in range(k)]


def kmeans_partition(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup], ratio: float,
                     seed: int = 0) -> dict[str, list[list[int]]]:
    """Per group, ``kept_width(width, ratio)`` clusters of its channels by k-means on :func:`weight_vectors`."""
    return {group.name: kmeans_clusters(weight_vectors(state_dict, group), kept_width(group.width, ratio), seed)
            for group in groups}
