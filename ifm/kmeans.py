"""The closest data-free peer's choice of channels (Model Folding, ICLR 2025), written for our channel groups.

Per group, k-means (k-means++ starts, Lloyd steps by matrix products) on each channel's concatenated weights (every member's slice: producer rows, biases, BN γ and
β, consumer columns; BN running statistics left out), with the same share of channels merged in every group. The
clusters are then merged by a merge rule (Model Folding: the mean rule) through :meth:`IterativeMerger.merge_partition`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

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


def _squared_distances(x: np.ndarray, sq: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(n, k)`` squared distances by one matrix product (``|x|² − 2 x·c + |c|²``, clipped at 0)."""
    d = sq[:, None] - 2.0 * (x @ centroids.T) + (centroids ** 2).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_once(x: np.ndarray, sq: np.ndarray, k: int, rng: np.random.Generator, iterations: int
                 ) -> tuple[np.ndarray, float]:
    """One k-means run: k-means++ starts, then Lloyd steps; returns the labels and the inertia."""
    n = len(x)
    chosen = [int(rng.integers(n))]
    closest = np.maximum(sq - 2.0 * x @ x[chosen[0]] + sq[chosen[0]], 0.0)
    for _ in range(1, k):
        total = closest.sum()
        pick = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
        chosen.append(pick)
        closest = np.minimum(closest, np.maximum(sq - 2.0 * x @ x[pick] + sq[pick], 0.0))
    centroids = x[chosen].copy()
    labels = np.full(n, -1)
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
    inertia = float(_squared_distances(x, sq, centroids)[np.arange(n), labels].sum())
    return labels, inertia


def kmeans_clusters(vectors: np.ndarray, k: int, seed: int = 0, n_init: int = 3, iterations: int = 20
                    ) -> list[list[int]]:
    """``k`` non-empty clusters of the rows of ``vectors`` (k-means++ starts and Lloyd steps, the best of
    ``n_init`` runs by inertia); an empty cluster takes the point farthest from its centroid, so exactly ``k``
    come back."""
    n = len(vectors)
    if k >= n:
        return [[i] for i in range(n)]
    x = np.ascontiguousarray(vectors, dtype=np.float64)
    sq = (x ** 2).sum(axis=1)
    rng = np.random.default_rng(seed)
    labels = min((_kmeans_once(x, sq, k, rng, iterations) for _ in range(n_init)), key=lambda run: run[1])[0]
    labels = labels.copy()
    for empty in sorted(set(range(k)) - set(labels.tolist())):
        sizes = np.bincount(labels, minlength=k)
        centroid_of = np.stack([x[labels == c].mean(axis=0) if sizes[c] else x[0] for c in range(k)])
        distance = ((x - centroid_of[labels]) ** 2).sum(axis=1)
        candidates = np.where(sizes[labels] > 1)[0]  # never empty another cluster
        labels[candidates[np.argmax(distance[candidates])]] = empty
    return [sorted(np.where(labels == c)[0].tolist()) for c in range(k)]


def kmeans_partition(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup], ratio: float,
                     seed: int = 0) -> dict[str, list[list[int]]]:
    """Per group, ``kept_width(width, ratio)`` clusters of its channels by k-means on :func:`weight_vectors`."""
    return {group.name: kmeans_clusters(weight_vectors(state_dict, group), kept_width(group.width, ratio), seed)
            for group in groups}
