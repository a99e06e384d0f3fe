"""Data-free repair of merged channels (beyond the paper; ``--bn_correction``).

A merged channel S of members i (n of them, pre-activations z_i, BN statistics μ_i, σ_i², s_i = sqrt(σ_i² + ε),
correlations ρ_ij) computes z_S = Σ z_i (official rule) or (1/n)·Σ z_i (mean rule). Its mean is kept by both
rules, but its variance is ``Σ_ij ρ_ij s_i s_j`` (÷ n² for the mean rule), where the official code stores Σ σ_i²
(right only for uncorrelated members) and the mean rule mean σ_i² (right only for identical ones). The correction
estimates ρ without data and stores the variance the merged channel really has:

* ``rows``: ρ̂_ij is the cosine of the members' producer rows;
* ``weights``: the cosine of each member's concatenated weights (Model Folding's choice, ICLR 2025): the producer
  row and bias with BN fused in, BN γ and β, and the consumer columns of the group.

With BN folded into the convs (``--bn_mode fold``) or without BN, there are no statistics to store: the merged
pre-activation's centred part is rescaled instead (rows × k_S, k_S = Σ t_i / sqrt(Σ ρ̂_ij t_i t_j), t_i the
member's output scale), the bias shifted so that its mean stays. Exact duplicates (ρ̂ = 1) come out exactly
function-preserving under every mode. Each BN a group touches (ResNet streams: every block's last BN and the
projection's) is corrected with its own statistics and producer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence, get_args

import numpy as np
import torch

from .groups import ChannelGroup, parse_segment_key, split_segments
from .merge import MERGE_RULES

Tensor = torch.Tensor
Estimator = Literal["none", "rows", "weights"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
BatchNorms = Mapping[str, tuple[str | None, float]]  # BN layer -> (its producer, eps)


@dataclass(frozen=True)
class Producer:
    """One pre-activation a group's channels hold: the conv/linear producing it and the BN right after it."""

    layer: str  # the conv/linear (its ``.weight`` rows are the channels)
    bn: str | None  # the BatchNorm right after it, if any
    eps: float = 1e-5


def producers_of(group: ChannelGroup, state_dict: Mapping[str, Tensor], batch_norms: BatchNorms) -> list[Producer]:
    """The group's producers that a correction can repair: each ≥2-D weight whose rows the group holds (not a
    segment, not a member every rule averages), with the BN whose producer it is."""
    bn_of = {producer: (bn, eps) for bn, (producer, eps) in batch_norms.items() if producer is not None}
    found = []
    for m in group.members:
        if m.axis != 0 or not m.key.endswith(".weight") or m.key in group.averaged or parse_segment_key(m.key):
            continue
        if state_dict[m.key].ndim < 2:
            continue
        layer = m.key[: -len(".weight")]
        bn, eps = bn_of.get(layer, (None, 1e-5))
        if bn is not None and f"{bn}.running_var" not in state_dict:
            bn = None
        found.append(Producer(layer, bn, eps))
    return found


class Scratch:
    """Reused memory for the copies a correction makes (fresh memory is slow to touch): one buffer per name."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """A tensor of ``shape`` in buffer ``name`` (its contents undefined; it stays valid until the next take)."""
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < size:
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype)
        return buffer[:size].view(*shape)


@dataclass(frozen=True)
class Part:
    """One piece of the members' vectors, read where it lies: ``values`` holds a slice per channel on its first axis
    (``channels``: which are the members, in order; None: the members themselves), and member i's piece is its
    slice times ``scale[i]`` (so BN is fused in without building the fused tensor)."""

    values: Tensor
    channels: Tensor | None = None
    scale: np.ndarray | None = None

    @classmethod
    def numbers(cls, *values: np.ndarray) -> Part:
        """A part of a few numbers per member (``values``: one array of them each)."""
        return cls(torch.from_numpy(np.stack(values, axis=1).astype(np.float64)))

    def grams(self, blocks: Sequence[tuple[int, int, int]], scratch: Scratch) -> list[np.ndarray]:
        """For each block ``(start, count, size)`` of ``count`` clusters of ``size`` members listed from member
        ``start`` on, the ``(count, size, size)`` Gram matrices of the members' pieces (one gather, one batched
        product: the members are never combined one by one)."""
        members = self.values
        if self.channels is not None:
            shape = (len(self.channels), *members.shape[1:])
            members = torch.index_select(members, 0, self.channels, out=scratch.take("members", shape, members.dtype))
        members = members.reshape(members.shape[0], -1)
        out = []
        for start, count, size in blocks:
            block = members[start:start + count * size].view(count, size, -1)
            gram = torch.bmm(block, block.transpose(1, 2)).double().numpy()
            if self.scale is not None:
                scale = self.scale[start:start + count * size].reshape(count, size)
                gram = gram * scale[:, :, None] * scale[:, None, :]
            out.append(gram)
        return out


@dataclass(frozen=True)
class KnownGram:
    """A part whose Gram matrix over all the group's channels is known already (upper triangle suffices: the
    merge's first pass keeps one of its consumers' columns, :attr:`ifm.merge.MergeResult.column_grams`)."""

    gram: np.ndarray
    channels: Tensor  # the members, in order

    def grams(self, blocks: Sequence[tuple[int, int, int]], scratch: Scratch) -> list[np.ndarray]:
        """Like :meth:`Part.grams`, read from the known matrix."""
        channels = self.channels.numpy()
        out = []
        for start, count, size in blocks:
            c = channels[start:start + count * size].reshape(count, size)
            i, j = c[:, :, None], c[:, None, :]
            out.append(self.gram[np.minimum(i, j), np.maximum(i, j)].astype(np.float64))
        return out


def _as_float(tensor: Tensor) -> Tensor:
    """Float32 or float64 (cosines: float32 is plenty; half precision is not)."""
    tensor = tensor.detach().cpu()
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _consumer_columns(state_dict: Mapping[str, Tensor], group: ChannelGroup, idx: Tensor,
                      scratch: Scratch) -> list[Part]:
    """Each consumer weight of the group, for the channels ``idx``: their columns (copied to one row per channel:
    the members are then gathered twice as fast)."""
    views = split_segments(state_dict, [group])
    out = []
    for m in group.members:
        w = views[m.key]
        if m.axis == 1 and w.ndim >= 2:
            columns = _as_float(w).reshape(w.shape[0], group.width, -1).transpose(0, 1)
            rows = scratch.take(f"columns{len(out)}", columns.shape, columns.dtype).copy_(columns)
            out.append(Part(rows, channels=idx))
    return out


@dataclass
class _Statistics:
    """A producer's quantities for the channels ``idx`` of the original weights (float64; the rows as stored)."""

    rows: Part  # the rows W (scale γ/s with BN: the fused rows W·γ/s)
    bias: np.ndarray  # fused bias β + (b − μ)·γ/s with BN, else b (0 without)
    gamma: np.ndarray | None
    beta: np.ndarray | None
    s: np.ndarray | None  # sqrt(var + eps)
    scale: np.ndarray  # t_i: the std of the member's fused output (|γ|·σ/s with BN, else |row|)
    centre: np.ndarray | None  # mean of the fused pre-activation without its bias: γ·(μ − b)/s (BN only)


def _statistics(state_dict: Mapping[str, Tensor], p: Producer, idx: Tensor) -> _Statistics:
    def get(key: str) -> np.ndarray | None:
        value = state_dict.get(key)
        if value is None:
            return None
        return value.detach().reshape(value.shape[0], -1)[idx].double().cpu().numpy().reshape(len(idx), -1)

    weight = state_dict[f"{p.layer}.weight"]
    rows = _as_float(weight).reshape(weight.shape[0], -1)
    bias = get(f"{p.layer}.bias")
    bias = np.zeros(len(idx)) if bias is None else bias[:, 0]
    if p.bn is None:
        norms = torch.linalg.vector_norm(rows, dim=1)[idx].double().numpy()
        return _Statistics(Part(rows, idx), bias, None, None, None, norms, None)
    mean, var = get(f"{p.bn}.running_mean")[:, 0], get(f"{p.bn}.running_var")[:, 0]
    gamma, beta = get(f"{p.bn}.weight"), get(f"{p.bn}.bias")
    gamma = np.ones_like(mean) if gamma is None else gamma[:, 0]
    beta = np.zeros_like(mean) if beta is None else beta[:, 0]
    s = np.sqrt(var + p.eps)
    k = gamma / s
    return _Statistics(Part(rows, idx, k), beta + (bias - mean) * k, gamma, beta, s,
                       np.abs(gamma) * np.sqrt(var) / s, k * (mean - bias))


def channel_vectors(stats: _Statistics, consumers: Sequence[Part | KnownGram], estimator: str
                    ) -> list[Part | KnownGram]:
    """The parts (side by side) of the vectors whose cosine estimates the correlation of two channels' (fused)
    outputs."""
    if estimator == "rows":
        return [stats.rows]
    numbers = [stats.bias] if stats.gamma is None else [stats.bias, stats.gamma, stats.beta]
    return [stats.rows, Part.numbers(*numbers), *consumers]


@dataclass(frozen=True)
class _Clusters:
    """The merged channels of one group that have two or more members: their positions in the merged state dict,
    and their members listed cluster after cluster (``idx``; cluster sizes ``sizes``, clusters of equal size
    together)."""

    positions: np.ndarray
    idx: Tensor
    sizes: np.ndarray

    @classmethod
    def of(cls, clusters: Sequence[Sequence[int]]) -> _Clusters:
        multi = sorted(((pos, list(c)) for pos, c in enumerate(clusters) if len(c) > 1), key=lambda pc: len(pc[1]))
        sizes = np.array([len(c) for _, c in multi], np.int64)
        idx = torch.tensor([i for _, c in multi for i in c], dtype=torch.long)
        return cls(np.array([pos for pos, _ in multi], np.int64), idx, sizes)

    def blocks(self) -> list[tuple[int, int, int]]:
        """``(first member, clusters, size)`` of each run of clusters of one size."""
        out, start, first = [], 0, 0
        for k in range(1, len(self.sizes) + 1):
            if k == len(self.sizes) or self.sizes[k] != self.sizes[first]:
                out.append((start, k - first, int(self.sizes[first])))
                start += (k - first) * int(self.sizes[first])
                first = k
        return out

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per cluster, the sum of ``values`` over its members."""
        return np.bincount(np.repeat(np.arange(len(self.sizes)), self.sizes), values, len(self.sizes))

    def squared_norms(self, parts: Sequence[Part | KnownGram], coef: np.ndarray, scratch: Scratch) -> np.ndarray:
        """Per cluster, ``|Σ_i coef_i u_i|²`` with ``u_i`` the unit vector of member i's parts side by side (so
        ``Σ_ij ρ̂_ij coef_i coef_j`` with ρ̂ their cosines), from the clusters' Gram matrices."""
        blocks = self.blocks()
        grams = [sum(g) for g in zip(*(p.grams(blocks, scratch) for p in parts))]
        out = []
        for (start, count, size), gram in zip(blocks, grams):
            norms = np.sqrt(np.einsum("cii->ci", gram))
            a = coef[start:start + count * size].reshape(count, size) / np.where(norms > 0, norms, 1.0)
            out.append(np.einsum("ci,cij,cj->c", a, gram, a))
        return np.concatenate(out) if out else np.zeros(0)


def correct_merged(original: Mapping[str, Tensor], merged: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                   clusters: Mapping[str, Sequence[Sequence[int]]], rule: str, batch_norms: BatchNorms,
                   estimator: str = "weights", folded: bool = False,
                   column_grams: Mapping[str, np.ndarray] | None = None) -> dict[str, Tensor]:
    """``merged`` with every merged channel repaired from the original weights (new tensors; inputs unchanged).

    Args:
        original: the unmerged state dict (BN not folded).
        merged: the merged state dict (of ``original``, or of its BN-folded copy when ``folded``).
        groups: the channel groups that were merged (of the original).
        clusters: per group, the original channels of each merged channel, in the merged state dict's order
            (:attr:`ifm.merge.MergeResult.clusters`).
        rule: the merge rule used, ``"official"`` (rows summed) or ``"mean"`` (rows averaged).
        batch_norms: each BN's producer and eps (:attr:`ifm.trace.TracedGraph.batch_norms`).
        estimator: ``"rows"`` or ``"weights"`` (see the module docstring); ``"none"`` returns ``merged``.
        folded: the merge ran on BN-folded weights: rescale rows and shift the BN bias instead of storing variances.
        column_grams: per group, the Gram matrix of ``original``'s consumer columns, where known (the merge's,
            :attr:`ifm.merge.MergeResult.column_grams`): read instead of computed again.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"correction must be one of {ESTIMATORS}, got {estimator!r}")
    if rule not in MERGE_RULES:
        raise ValueError(f"rule must be one of {MERGE_RULES}, got {rule!r}")
    out = dict(merged)
    if estimator == "none":
        return out
    scratch = Scratch()
    for group in groups:
        found = _Clusters.of(clusters[group.name])
        if len(found.positions) == 0:
            continue
        consumers = []
        if estimator == "weights" and column_grams and group.name in column_grams:
            consumers = [KnownGram(column_grams[group.name], found.idx)]
        elif estimator == "weights":
            consumers = _consumer_columns(original, group, found.idx, scratch)
        for producer in producers_of(group, original, batch_norms):
            stats = _statistics(original, producer, found.idx)
            _repair(out, producer, stats, channel_vectors(stats, consumers, estimator), found, rule, folded, scratch)
    return out


def _repair(out: dict[str, Tensor], p: Producer, stats: _Statistics, parts: Sequence[Part | KnownGram], found: _Clusters,
            rule: str, folded: bool, scratch: Scratch) -> None:
    """Repair ``p``'s merged channels in ``out``; ``parts``: the channels' vectors (:func:`channel_vectors`)."""
    divisor = found.sizes.astype(np.float64) if rule == "mean" else np.ones(len(found.sizes))
    if p.bn is not None and not folded:  # store the variance of the pre-BN output (ρ of z: γ's sign removed)
        a = stats.s * np.sign(stats.gamma)
        spread = found.squared_norms(parts, a, scratch)
        key = f"{p.bn}.running_var"
        var = out[key].detach().clone()
        var[found.positions] = torch.as_tensor(np.maximum(spread / divisor ** 2 - p.eps, 0.0), dtype=var.dtype)
        out[key] = var
        return
    t = stats.scale
    spread = np.sqrt(found.squared_norms(parts, t, scratch))
    k = np.where(spread > 0, found.sums(t) / np.where(spread > 0, spread, 1.0), 1.0)
    key = f"{p.layer}.weight"
    weight = out[key].detach().clone()
    shape = (-1,) + (1,) * (weight.ndim - 1)
    weight[found.positions] *= torch.as_tensor(k, dtype=weight.dtype).view(shape)
    out[key] = weight
    if folded and p.bn is not None:  # keep the mean: the centred part's mean moves from m to k·m
        key = f"{p.bn}.bias"
        bias = out[key].detach().clone()
        centre = found.sums(stats.centre) / divisor
        bias[found.positions] += torch.as_tensor((1.0 - k) * centre, dtype=bias.dtype)
        out[key] = bias
