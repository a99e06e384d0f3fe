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
from typing import Mapping, Sequence

import numpy as np
import torch

from .groups import ChannelGroup, channel_slices, parse_segment_key, split_segments

Tensor = torch.Tensor
ESTIMATORS: tuple[str, ...] = ("none", "rows", "weights")
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


def _consumer_columns(state_dict: Mapping[str, Tensor], group: ChannelGroup, idx: Tensor) -> list[np.ndarray]:
    """Each consumer weight of the group as ``(len(idx), rest)``: the columns of channels ``idx``."""
    views = split_segments(state_dict, [group])
    out = []
    for m in group.members:
        w = views[m.key]
        if m.axis == 1 and w.ndim >= 2:  # (cosines: float32 is plenty)
            out.append(channel_slices(w.detach(), 1, group.width, idx).float().numpy())
    return out


@dataclass
class _Statistics:
    """A producer's quantities for the channels ``idx`` of the original weights (float64; the rows float32)."""

    rows: np.ndarray  # (len(idx), fan_in): fused rows W·γ/s with BN, else W (float32)
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

    rows = state_dict[f"{p.layer}.weight"].detach()
    rows = rows.reshape(rows.shape[0], -1)[idx].float().cpu().numpy()  # (cosines: float32 is plenty)
    bias = get(f"{p.layer}.bias")
    bias = np.zeros(len(rows)) if bias is None else bias[:, 0]
    if p.bn is None:
        return _Statistics(rows, bias, None, None, None, np.linalg.norm(rows, axis=1), None)
    mean, var = get(f"{p.bn}.running_mean")[:, 0], get(f"{p.bn}.running_var")[:, 0]
    gamma, beta = get(f"{p.bn}.weight"), get(f"{p.bn}.bias")
    gamma = np.ones_like(mean) if gamma is None else gamma[:, 0]
    beta = np.zeros_like(mean) if beta is None else beta[:, 0]
    s = np.sqrt(var + p.eps)
    k = gamma / s
    return _Statistics(rows * k[:, None].astype(rows.dtype), beta + (bias - mean) * k, gamma, beta, s,
                       np.abs(gamma) * np.sqrt(var) / s, k * (mean - bias))


def channel_vectors(stats: _Statistics, consumers: Sequence[np.ndarray], estimator: str) -> list[np.ndarray]:
    """The parts (side by side) of the vectors whose cosine estimates the correlation of two channels' (fused)
    outputs."""
    if estimator == "rows":
        return [stats.rows]
    parts = [stats.rows, stats.bias[:, None]]
    if stats.gamma is not None:
        parts += [stats.gamma[:, None], stats.beta[:, None]]
    return parts + list(consumers)


@dataclass(frozen=True)
class _Clusters:
    """The merged channels of one group that have two or more members: their positions in the merged state dict,
    and their members listed cluster after cluster (``idx``; cluster sizes ``sizes``)."""

    positions: np.ndarray
    idx: Tensor
    sizes: np.ndarray

    @classmethod
    def of(cls, clusters: Sequence[Sequence[int]]) -> _Clusters:
        multi = [(pos, list(c)) for pos, c in enumerate(clusters) if len(c) > 1]
        sizes = np.array([len(c) for _, c in multi], np.int64)
        idx = torch.tensor([i for _, c in multi for i in c], dtype=torch.long)
        return cls(np.array([pos for pos, _ in multi], np.int64), idx, sizes)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per cluster, the sum of ``values`` over its members."""
        return np.bincount(np.repeat(np.arange(len(self.sizes)), self.sizes), values, len(self.sizes))

    def squared_norms(self, parts: Sequence[np.ndarray], coef: np.ndarray) -> np.ndarray:
        """Per cluster, ``|Σ_i coef_i u_i|²`` with ``u_i`` the unit vector of member i's parts side by side (so
        ``Σ_ij ρ̂_ij coef_i coef_j`` with ρ̂ their cosines), without putting the parts side by side."""
        from scipy.sparse import csr_matrix
        norms = np.sqrt(sum(np.einsum("ij,ij->i", p, p, dtype=np.float64) for p in parts))
        weights = coef / np.where(norms > 0, norms, 1.0)
        m, k = len(weights), len(self.sizes)
        members = csr_matrix((weights, np.arange(m), np.concatenate([[0], np.cumsum(self.sizes)])), shape=(k, m))
        return sum(np.einsum("ij,ij->i", s, s, dtype=np.float64)
                   for s in (np.asarray(members.astype(p.dtype) @ p) for p in parts))


def correct_merged(original: Mapping[str, Tensor], merged: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                   clusters: Mapping[str, Sequence[Sequence[int]]], rule: str, batch_norms: BatchNorms,
                   estimator: str = "weights", folded: bool = False) -> dict[str, Tensor]:
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
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"bn_correction must be one of {ESTIMATORS}, got {estimator!r}")
    if rule not in ("official", "mean"):
        raise ValueError(f"rule must be 'official' or 'mean', got {rule!r}")
    out = dict(merged)
    if estimator == "none":
        return out
    for group in groups:
        found = _Clusters.of(clusters[group.name])
        if len(found.positions) == 0:
            continue
        consumers = _consumer_columns(original, group, found.idx) if estimator == "weights" else []
        for producer in producers_of(group, original, batch_norms):
            stats = _statistics(original, producer, found.idx)
            _repair(out, producer, stats, channel_vectors(stats, consumers, estimator), found, rule, folded)
    return out


def _repair(out: dict[str, Tensor], p: Producer, stats: _Statistics, parts: Sequence[np.ndarray], found: _Clusters,
            rule: str, folded: bool) -> None:
    """Repair ``p``'s merged channels in ``out``; ``parts``: the channels' vectors (:func:`channel_vectors`)."""
    divisor = found.sizes.astype(np.float64) if rule == "mean" else np.ones(len(found.sizes))
    if p.bn is not None and not folded:  # store the variance of the pre-BN output (ρ of z: γ's sign removed)
        a = stats.s * np.sign(stats.gamma)
        spread = found.squared_norms(parts, a)
        key = f"{p.bn}.running_var"
        var = out[key].detach().clone()
        var[found.positions] = torch.as_tensor(np.maximum(spread / divisor ** 2 - p.eps, 0.0), dtype=var.dtype)
        out[key] = var
        return
    t = stats.scale
    spread = np.sqrt(found.squared_norms(parts, t))
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
