"""BatchNorm around a merge (beyond the paper; none of it runs by default).

* ``fold``: every BatchNorm is folded into the layer before it (scale into its weight rows, shift into the BN
  bias) and left as the identity plus that bias. Merging then sums the folded rows and biases and never sums BN
  statistics, so merging exact duplicates preserves the function (``bn_mode="fold"``).
* :func:`recalibrate_bn`: re-estimate BN running statistics on batches after merging (real or synthesised
  images, :func:`ifm.pipeline.reestimate_statistics`).
"""
from __future__ import annotations

from typing import Iterable, Literal, Mapping, Sequence, get_args

import torch
from torch import nn

from .groups import ChannelGroup, base_key

Tensor = torch.Tensor
BnMode = Literal["official", "fold"]  # BN statistics summed by the merge (the official code), or BN folded first
BN_MODES: tuple[str, ...] = get_args(BnMode)
BN_STATS = ("weight", "running_mean", "running_var")


def _bn_prefixes(state_dict: Mapping[str, Tensor]) -> list[str]:
    return [k[: -len(".running_mean")] for k in state_dict if k.endswith(".running_mean")]


def _producer_of(state_dict: Mapping[str, Tensor], bn: str) -> str | None:
    """The conv/linear whose weight comes right before ``bn`` in state-dict order."""
    previous = None
    for key, value in state_dict.items():
        if key == f"{bn}.weight":
            return previous
        if key.endswith(".weight") and value.ndim >= 2:
            previous = key[: -len(".weight")]
    return None


BatchNorms = Mapping[str, tuple[str | None, float]]  # BN layer -> (the conv/linear right before it, eps)


def batch_norms_by_order(state_dict: Mapping[str, Tensor], eps: float = 1e-5) -> dict[str, tuple[str | None, float]]:
    """Each BN's producer taken as the conv/linear right before it in state-dict order, and one ``eps`` (a guess
    for hand-described chains; traced graphs know both: :attr:`ifm.trace.TracedGraph.batch_norms`)."""
    return {bn: (_producer_of(state_dict, bn), eps) for bn in _bn_prefixes(state_dict)}


def fold_batchnorm(state_dict: Mapping[str, Tensor], batch_norms: BatchNorms | None = None) -> dict[str, Tensor]:
    """Fold every BN into its producer: ``W <- W·γ/σ``, BN bias ``<- β + (b - μ)·γ/σ`` (conv bias 0),
    and BN weight 1, mean 0, var ``1 - eps`` (so the BN computes ``x + bias``). A BN without a producer right
    before it (pre-activation) becomes the affine map ``x·γ/σ + β - μγ/σ`` (weight ``γ/σ``, mean 0, var
    ``1 - eps``)."""
    batch_norms = batch_norms_by_order(state_dict) if batch_norms is None else batch_norms
    folded = {k: v.clone() for k, v in state_dict.items()}
    for bn, (producer, eps) in batch_norms.items():
        if f"{bn}.running_mean" not in folded:
            continue
        if producer is None:  # pre-activation: becomes an affine per-channel scale and shift
            scale = folded[f"{bn}.weight"] / torch.sqrt(folded[f"{bn}.running_var"] + eps)
            folded[f"{bn}.bias"] = folded[f"{bn}.bias"] - folded[f"{bn}.running_mean"] * scale
            folded[f"{bn}.weight"] = scale
            folded[f"{bn}.running_mean"] = torch.zeros_like(scale)
            folded[f"{bn}.running_var"] = torch.full_like(scale, 1 - eps)
            continue
        gamma, beta = folded[f"{bn}.weight"], folded[f"{bn}.bias"]
        mean, var = folded[f"{bn}.running_mean"], folded[f"{bn}.running_var"]
        scale = gamma / torch.sqrt(var + eps)
        weight = folded[f"{producer}.weight"]
        folded[f"{producer}.weight"] = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
        bias = folded.get(f"{producer}.bias")
        shift = (bias if bias is not None else torch.zeros_like(mean)) - mean
        folded[f"{bn}.bias"] = beta + shift * scale
        if bias is not None:
            folded[f"{producer}.bias"] = torch.zeros_like(bias)
        folded[f"{bn}.weight"] = torch.ones_like(gamma)
        folded[f"{bn}.running_mean"] = torch.zeros_like(mean)
        folded[f"{bn}.running_var"] = torch.full_like(var, 1 - eps)
    return folded


def affine(batch_norms: BatchNorms) -> set[str]:
    """BN layers folding turns into a per-channel scale and shift (no conv/linear right before them)."""
    return {bn for bn, (producer, _) in batch_norms.items() if producer is None}


def without_bn_statistics(groups: Sequence[ChannelGroup], batch_norms: BatchNorms | None = None
                          ) -> list[ChannelGroup]:
    """Groups without the running statistics of folded BNs, nor the weight of those folded into their producer
    (identities after folding; BN bias stays). The weight of an affine BN stays, as a scale averaged by any rule."""
    scaled = affine(batch_norms or {})
    out = []
    for g in groups:
        keys = [base_key(m.key) for m in g.members]
        bn_layers = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".running_mean")}
        keep, averaged = [], set(g.averaged)
        for m, k in zip(g.members, keys):
            layer, param = k.rsplit(".", 1)
            if layer in bn_layers and param in BN_STATS:
                if not (layer in scaled and param == "weight"):
                    continue
                averaged.add(m.key)
            keep.append(m)
        out.append(ChannelGroup(g.name, g.width, keep, frozenset(averaged)))
    return out


def reset_identity_bn(state_dict: Mapping[str, Tensor], batch_norms: BatchNorms | None = None) -> dict[str, Tensor]:
    """After merging folded weights: give every folded BN the width of its bias, as the identity."""
    batch_norms = batch_norms_by_order(state_dict) if batch_norms is None else batch_norms
    out = dict(state_dict)
    for bn, (producer, eps) in batch_norms.items():
        if f"{bn}.running_mean" not in out:
            continue
        width = out[f"{bn}.bias"].shape[0]
        like = out[f"{bn}.bias"]
        if producer is not None:  # (an affine BN keeps its merged scale)
            out[f"{bn}.weight"] = torch.ones(width, dtype=like.dtype)
        out[f"{bn}.running_mean"] = torch.zeros(width, dtype=like.dtype)
        out[f"{bn}.running_var"] = torch.full((width,), 1 - eps, dtype=like.dtype)
    return out


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that hold running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> nn.Module:
    """Re-estimate every BN's running mean and variance on ``batches`` (cumulative average)."""
    for bn in batch_norm_layers(model):
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x, _ in batches:
        model(x)
    model.eval()
    return model
