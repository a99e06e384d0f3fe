"""How a checkpoint is structured, per merged layer: how close its closest channels are (Fig. 2(a)'s statistic:
Eq. 6 distances divided by the layer's largest), how many channels are dead, and how spread its channel norms and
BN scales are. Says whether a checkpoint has the near-exact duplicates the paper reports (a minimum normalised
distance of 2e-15 in VGG16's last conv) before any merge is run."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..groups import ChannelGroup, base_key, channel_slices, split_segments
from ..merge import distance_matrices
from .io import write_csv, write_json
from .plots import pyplot, save_figure

Tensor = torch.Tensor
#: a BN scale |γ| at most this fraction of the layer's median |γ| counts as zero (a dead channel)
DEAD_SCALE = 1e-3
#: normalised distances below this count as duplicate pairs
DUPLICATE_DISTANCE = 1e-6


def _official_gram(v: Tensor) -> Tensor:
    """The official code's formula: ``A + Aᵀ − diag(A) − diag(A)`` with ``A = V Vᵀ`` (negated: a distance)."""
    a = v @ v.T
    return -(a + a.T - a.diagonal()[None, :] - a.diagonal()[:, None])


def _explicit_differences(v: Tensor) -> Tensor:
    """``Σ (v_i − v_j)²`` from the differences themselves, one row at a time."""
    return torch.stack([((v - row) ** 2).sum(1) for row in v])


#: the usual ways to compute Eq. 6 distances between a group's channel vectors, each in the dtype it names
DISTANCE_FORMULAS: dict[str, Callable[[Tensor], Tensor]] = {
    "official_gram_float32": lambda v: _official_gram(v.float()),
    "cdist_float32": lambda v: torch.cdist(v.float(), v.float()) ** 2,
    "cdist_float64": lambda v: torch.cdist(v.double(), v.double()) ** 2,
    "explicit_float64": lambda v: _explicit_differences(v.double()),
}


def channel_vectors(state_dict: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
    """``(width, d)``: each channel's Eq. 6 vector, its slices of every ≥2-D member (rows and columns)."""
    views = split_segments(state_dict, [group])
    return torch.cat([channel_slices(views[m.key].detach().double(), m.axis, group.width)
                      for m in group.distance_members(views)], 1)


def self_distance_residues(vectors: Tensor) -> dict[str, float]:
    """Per formula of :data:`DISTANCE_FORMULAS`: the largest diagonal entry (a channel's distance to itself, 0 in
    exact arithmetic) divided by the largest off-diagonal one. A heatmap minimum taken with the diagonal in reads
    this residue instead of the closest pair."""
    out = {}
    eye = torch.eye(len(vectors), dtype=torch.bool)
    for name, formula in DISTANCE_FORMULAS.items():
        d = formula(vectors).double()
        largest = float(d[~eye].max()) if len(vectors) > 1 else 0.0
        out[name] = float(d.diagonal().abs().max()) / largest if largest > 0 else 0.0
    return out


@dataclass
class LayerDiagnosis:
    """One channel group of a checkpoint (distances normalised by the group's largest)."""

    group: str
    width: int
    min_distance: float
    median_distance: float
    duplicate_pairs: int  # channel pairs closer than DUPLICATE_DISTANCE
    dead_bn: int  # channels whose BN scale is ~0 in every BN of the group
    dead_relu: int | None  # channels never positive on the given images (None: no data, or a residual stream)
    norm_min: float  # norms of the channels' producing weights
    norm_median: float
    norm_max: float
    bn_scale_min: float | None  # |γ| of the group's BNs
    bn_scale_median: float | None
    bn_scale_max: float | None
    #: per distance formula (:data:`DISTANCE_FORMULAS`), the largest self-distance over the largest distance
    diagonal_residues: dict[str, float] | None = None


def _bn_weights(views: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], group: ChannelGroup) -> list[Tensor]:
    """The |γ| of every BN the group indexes (a 1-D ``weight`` beside a ``running_var``)."""
    found = []
    for member in group.members:
        key = base_key(member.key)
        if key.endswith(".weight") and views[member.key].ndim == 1 and f"{key[:-len('weight')]}running_var" in state_dict:
            found.append(views[member.key].detach().abs().double())
    return found


def diagnose_groups(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                    never_positive: Mapping[str, int] | None = None) -> list[LayerDiagnosis]:
    """Per group: distances, dead channels (``never_positive``: group name -> channels never positive on data,
    from :func:`count_never_positive`), norms and BN scales."""
    distances = distance_matrices(state_dict, groups)
    views = split_segments(state_dict, groups)
    rows = []
    for group in groups:
        d = distances[group.name].double()
        off = d[~torch.eye(group.width, dtype=torch.bool)]
        scale = float(d.max())
        normalised = off / scale if scale > 0 else torch.zeros_like(off)
        producers = [m for m in group.distance_members(views) if m.axis == 0]
        norms = torch.cat([channel_slices(views[m.key].double(), 0, group.width) for m in producers], 1).norm(dim=1)
        gammas = _bn_weights(views, state_dict, group)
        dead_bn = 0
        if gammas:
            dead = torch.stack([g <= DEAD_SCALE * g.median() for g in gammas]).all(0)
            dead_bn = int(dead.sum())
        all_gammas = torch.cat(gammas) if gammas else None
        rows.append(LayerDiagnosis(
            group.name, group.width, float(normalised.min()) if off.numel() else float("nan"),
            float(normalised.median()) if off.numel() else float("nan"),
            int((normalised < DUPLICATE_DISTANCE).sum()) // 2, dead_bn,
            None if never_positive is None else never_positive.get(group.name),
            float(norms.min()), float(norms.median()), float(norms.max()),
            *((float(all_gammas.min()), float(all_gammas.median()), float(all_gammas.max())) if gammas
              else (None, None, None)),
            self_distance_residues(channel_vectors(state_dict, group))))
    return rows


def diagnose_checkpoint(arch: str, checkpoint: str | Path, data_root: str | None = None, images: int = 1000,
                        stages: Sequence[int] | None = None, progress: bool = False) -> list[LayerDiagnosis]:
    """Diagnose a checkpoint of ``arch`` (every stage of a ResNet unless ``stages``); with ``data_root`` (CIFAR-10),
    also count the channels never positive on ``images`` training images."""
    from ..discovery import channel_groups
    from ..errors import IFMError
    from .evaluate import training_image_batches
    from .run import RunSpec
    from .loading import load_model
    loaded = load_model(RunSpec(arch=arch, model_param=str(checkpoint)))
    stages = stages or ((1, 2, 3, 4) if loaded.arch.is_resnet else None)
    groups = channel_groups(loaded.arch, loaded.state_dict, stages)
    never_positive = None
    if data_root:
        if loaded.arch.dataset != "cifar10":
            raise IFMError(f"the diagnosis reads training images of CIFAR-10 models only; leave out the data root "
                           f"for {arch}")
        _, batches = training_image_batches(data_root, images, loaded.normalize, progress)
        never_positive = count_never_positive(loaded.model, groups, batches)
    return diagnose_groups(loaded.state_dict, groups, never_positive)


def count_never_positive(model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable[Tensor]
                         ) -> dict[str, int]:
    """Per group with one producing layer: the channels whose pre-activation (the output of the BN after that
    layer, else of the layer) is never positive over every image and position of ``batches``: after a ReLU they
    are always zero. Residual streams (several producers) are left out."""
    modules = dict(model.named_modules())
    watched: dict[str, str] = {}
    for group in groups:
        layers = [m.key.rpartition(".")[0] for m in group.members if m.axis == 0]
        convs = [p for p in dict.fromkeys(layers) if isinstance(modules.get(p), (nn.Conv2d, nn.Linear))]
        if len(convs) != 1:
            continue
        bns = [p for p in dict.fromkeys(layers) if isinstance(modules.get(p), nn.modules.batchnorm._BatchNorm)]
        watched[group.name] = bns[0] if len(bns) == 1 else convs[0]
    peaks: dict[str, Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            peak = output.detach().transpose(0, 1).reshape(output.shape[1], -1).amax(1)
            peaks[name] = peak if name not in peaks else torch.maximum(peaks[name], peak)
        return record
    _forward_with_hooks(model, [(modules[layer], hook(name)) for name, layer in watched.items()], batches)
    return {name: int((peak <= 0).sum()) for name, peak in peaks.items()}


def _forward_with_hooks(model: nn.Module, hooks: Sequence[tuple[nn.Module, Callable]], batches: Iterable[Tensor]
                        ) -> None:
    """Run ``model`` (eval mode, no gradients) over ``batches`` with forward ``hooks`` on their modules, removed
    afterwards."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        model.eval()
        with torch.no_grad():
            for images in batches:
                model(images)
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class BatchNormMismatch:
    """One BatchNorm of a (merged) model: its stored statistics against those of its input on data, per channel."""

    layer: str
    channels: int
    var_ratio_median: float  # measured variance / stored running_var (1: right; < 1: the stored one is too large)
    var_ratio_p10: float
    var_ratio_p90: float
    mean_shift_median: float  # |measured mean − running_mean| / measured std


def batchnorm_mismatch(model: nn.Module, batches: Iterable[Tensor]) -> list[BatchNormMismatch]:
    """How far every BatchNorm's running statistics are from its input's statistics on ``batches`` (eval mode: the
    model computes what it computes when deployed). A data-free repair is right where the ratios stay near 1."""
    sums: dict[str, list] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
            total = sums.setdefault(name, [0, 0.0, 0.0])
            total[0] += x.shape[1]
            total[1] = total[1] + x.sum(1)
            total[2] = total[2] + x.pow(2).sum(1)
        return record
    bns = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.running_var is not None}
    _forward_with_hooks(model, [(m, hook(name)) for name, m in bns.items()], batches)
    rows = []
    for name, (count, total, squares) in sums.items():
        bn = bns[name]
        mean = total / count
        var = (squares / count - mean.pow(2)).clamp_min(0) * count / max(count - 1, 1)
        ratio = var / bn.running_var.double()
        shift = (mean - bn.running_mean.double()).abs() / (var + bn.eps).sqrt()
        q = torch.quantile(ratio, torch.tensor([0.1, 0.5, 0.9], dtype=ratio.dtype))
        rows.append(BatchNormMismatch(name, len(ratio), float(q[1]), float(q[0]), float(q[2]), float(shift.median())))
    return rows


def format_mismatch(rows: Sequence[BatchNormMismatch]) -> str:
    """A short table for the terminal."""
    lines = [f"{'BatchNorm':24s} {'channels':>8} {'var measured/stored (10%, 50%, 90%)':>36} {'mean shift':>10}"]
    lines += [f"{r.layer:24s} {r.channels:>8} {r.var_ratio_p10:>12.3g} {r.var_ratio_median:>11.3g} "
              f"{r.var_ratio_p90:>11.3g} {r.mean_shift_median:>10.3g}" for r in rows]
    return "\n".join(lines)


def write_diagnosis(rows: Sequence[LayerDiagnosis], out: str | Path, title: str = "") -> dict[str, Path]:
    """``diagnose.json``, ``diagnose.csv`` and ``diagnose.png`` (per layer: the smallest and median normalised
    distance on a log scale, and the dead channels) in ``out``."""
    out = Path(out)
    records = [asdict(r) for r in rows]
    flat = [{**{k: v for k, v in r.items() if k != "diagonal_residues"},
             **{f"residue_{name}": value for name, value in (r["diagonal_residues"] or {}).items()}} for r in records]
    written = {"json": write_json(out / "diagnose.json", records),
               "csv": write_csv(out / "diagnose.csv", list(flat[0]), [list(r.values()) for r in flat])}
    plt = pyplot()
    fig, (ax_d, ax_dead) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    xs = range(1, len(rows) + 1)
    floor = 1e-17  # an exact duplicate (distance 0) is drawn at the floor
    ax_d.semilogy(xs, [max(r.min_distance, floor) for r in rows], marker="o", label="smallest")
    ax_d.semilogy(xs, [max(r.median_distance, floor) for r in rows], marker="s", label="median")
    ax_d.set(ylabel="normalised Eq. 6 distance", title=title or "Closest channels and dead channels per layer")
    ax_d.legend(fontsize=8)
    ax_d.grid(alpha=0.3)
    ax_dead.bar([x - 0.2 for x in xs], [r.dead_bn for r in rows], width=0.4, label="BN scale ≈ 0")
    ax_dead.bar([x + 0.2 for x in xs], [r.dead_relu or 0 for r in rows], width=0.4, label="never positive on data")
    ax_dead.set(ylabel="dead channels", xlabel="merged layer")
    ax_dead.set_ylim(0, 1.15 * max([1] + [r.dead_bn for r in rows] + [r.dead_relu or 0 for r in rows]))
    ax_dead.set_xticks(list(xs), [r.group for r in rows], rotation=45, ha="right", fontsize=7)
    ax_dead.legend(fontsize=8)
    ax_dead.grid(alpha=0.3)
    fig.tight_layout()
    written["png"] = save_figure(fig, out / "diagnose.png")
    return written


def format_diagnosis(rows: Sequence[LayerDiagnosis]) -> str:
    """A short table for the terminal."""
    lines = [f"{'group':24s} {'width':>6} {'min dist':>10} {'median':>9} {'dup pairs':>9} {'dead BN':>8} "
             f"{'dead ReLU':>9}"]
    lines += [f"{r.group:24s} {r.width:>6} {r.min_distance:>10.3g} {r.median_distance:>9.3g} {r.duplicate_pairs:>9} "
              f"{r.dead_bn:>8} {'-' if r.dead_relu is None else r.dead_relu:>9}" for r in rows]
    return "\n".join(lines + [format_residues(rows)])


def format_residues(rows: Sequence[LayerDiagnosis]) -> str:
    """The self-distance line: each formula's largest diagonal residue over all layers, beside the smallest
    off-diagonal distance (both normalised by the layer's largest distance)."""
    closest = min(rows, key=lambda r: r.min_distance)
    residues = {name: max((r.diagonal_residues or {}).get(name, 0.0) for r in rows) for name in DISTANCE_FORMULAS}
    return ("self-distance residue (largest diagonal entry / largest distance; 0 in exact arithmetic): "
            + ", ".join(f"{name} {value:.3g}" for name, value in residues.items())
            + f"; smallest off-diagonal distance {closest.min_distance:.3g} ({closest.group}). The table's distances "
            "are IFM's (exact float64 Gram bookkeeping) with the diagonal left out.")
