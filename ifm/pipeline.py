"""Compression in one call: every step IFM (or its k-means peer) takes on a model, the options beyond the paper
included.

    from ifm import Compression, compress
    done = compress(model, Compression(target_params=25, allocation="uniform", rule="mean", synthetic_bn=64),
                    input_size=(3, 32, 32))
    done.model, done.state_dict, done.widths   # the slim module and its weights, BN statistics final

The steps, each an option of :class:`Compression` (the defaults are the official IFM, nothing else):

1. the merge rule (``rule="auto"``: the mean rule when the model has SiLU, GELU... between layers it merges);
2. the channel groups, traced from the model's graph (:mod:`ifm.discovery`);
3. a parameter budget (``target_params``) resolved to a β or a share of merged channels (:mod:`ifm.budget`);
4. BN folded into the convs first (``bn_mode="fold"``, :mod:`ifm.batchnorm`);
5. the merge: IFM's closest pairs (Eq. 6-10, :mod:`ifm.merge`) or k-means clusters (``clustering="kmeans"``);
6. folded BNs reset, and the data-free correction of merged channels (``correction``, :mod:`ifm.correction`);
7. BN statistics re-estimated, on ``synthetic_bn`` images synthesised from the original network's BN statistics
   (:mod:`ifm.synthesis`) or on a ``calibration`` iterable of real batches;
8. the merged network distilled from the original (``distill`` steps, :mod:`ifm.distill`) on synthesised images
   (``distill_images``, or the ``synthetic_bn`` ones) or on real ``distill_inputs``.

Every input layout gives the same result (the state dict is taken in the standard layout first).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence, get_args

import torch
from torch import nn

from . import batchnorm
from .architectures import Architecture, get_architecture, model_for_state_dict, module_architecture
from .batchnorm import BN_MODES, BnMode
from .budget import ALLOCATIONS, Allocation, Budget, ifm_budget, params_at_widths, uniform_budget
from .correction import ESTIMATORS, Estimator, correct_merged
from .discovery import channel_groups, check_groups
from .errors import IFMWarning
from .groups import ChannelGroup
from .kmeans import kmeans_partition
from .layout import standard_layout
from .merge import DTYPES, MERGE_RULES, ORDERS, Dtype, IterativeMerger, MergeResult, Order, check_hyperparameters
from . import synthesis as synthesis_
from .progress import StepBar
from .distill import DEFAULT_MIX, MIXES, Distillation, Mix, distill_model
from .synthesis import CHUNK, SyntheticImages
from .trace import TracedGraph

Tensor = torch.Tensor
RuleChoice = Literal["official", "mean", "auto"]
RULE_CHOICES: tuple[str, ...] = MERGE_RULES + ("auto",)
Clustering = Literal["ifm", "kmeans"]  # IFM's closest pairs, or k-means clusters of each group (Model Folding's)
CLUSTERINGS: tuple[str, ...] = get_args(Clustering)
DistillData = Literal["synthetic", "real"]  # what a distillation trains on (real: inputs the caller gives)
DISTILL_DATA: tuple[str, ...] = get_args(DistillData)

#: every option with a fixed set of values, by field name of :class:`Compression`
CHOICES: dict[str, tuple[str, ...]] = {"order": ORDERS, "rule": RULE_CHOICES, "bn_mode": BN_MODES,
                                       "correction": ESTIMATORS, "clustering": CLUSTERINGS,
                                       "allocation": ALLOCATIONS, "dtype": DTYPES, "distill_mix": MIXES}


@dataclass(frozen=True)
class Compression:
    """What to do to a model (frozen; variants by :func:`dataclasses.replace`). The defaults are the official IFM.

    Attributes:
        beta: Eq. 9's threshold β in (0, 1): a group merges while its closest pair is within β of its farthest.
        max_ratio: in (0, 1]: a group is visited while fewer than ``max_ratio`` of its channels are merged (with
            k-means: the share merged in every group).
        order: ``"official"`` (one merge per group per sweep) or ``"layerwise"`` (the paper's Algorithm 1).
        rule: ``"official"`` (rows summed, columns averaged), ``"mean"`` (the dual) or ``"auto"``.
        bn_mode: ``"official"`` (BN statistics summed, as the official code) or ``"fold"`` (BN folded first).
        correction: the data-free repair of merged channels: ``"none"``, ``"rows"`` or ``"weights"``.
        clustering: ``"ifm"`` (closest pairs) or ``"kmeans"`` (Model Folding's clusters, merged by the rule).
        target_params: keep at least this % of the parameters (β, or the share for ``allocation="uniform"``,
            is found for it; None: no budget).
        allocation: with a budget, ``"ifm"`` (the largest β that keeps it) or ``"uniform"`` (one share for all).
        max_merges: stop IFM after its first N merges (a budget sets it when no β lands on it).
        synthetic_bn: re-estimate BN statistics on this many images synthesised from the original network's.
        distill: train the merged network for this many steps to match the original's outputs (0: no).
        distill_images: synthesise this many images to distil on (0: the ``synthetic_bn`` images).
        distill_mix: mix each distillation image with another of its batch: ``"cutmix"`` (the default),
            ``"mixup"`` or ``"none"`` (:func:`ifm.distill.mixed`; new inputs for free).
        synthesis_steps: optimisation steps of the image synthesis (None: :data:`ifm.synthesis.ITERATIONS`, 500);
            fewer cost proportionally less (200 lose 0.15 points at 25 % of a VGG11's parameters, 2 at 6.3 %).
        stages: ResNet stages to merge (None: the official 3 and 4).
        dtype: ``"float64"`` or ``"float32"`` distance bookkeeping.
    """

    beta: float = 0.1
    max_ratio: float = 1.0
    order: Order = "official"
    rule: RuleChoice = "official"
    bn_mode: BnMode = "official"
    correction: Estimator = "none"
    clustering: Clustering = "ifm"
    target_params: float | None = None
    allocation: Allocation = "ifm"
    max_merges: int | None = None
    synthetic_bn: int = 0
    stages: tuple[int, ...] | None = None
    dtype: Dtype = "float64"
    distill: int = 0
    distill_images: int = 0
    distill_mix: Mix = DEFAULT_MIX
    synthesis_steps: int | None = None

    @property
    def images_needed(self) -> int:
        """How many synthesised images the compression uses (BN statistics and distillation together)."""
        return max(self.synthetic_bn, self.distill_images if self.distill else 0)

    @property
    def synthesis_iterations(self) -> int:
        """The steps each synthesised image is optimised for."""
        return self.synthesis_steps or synthesis_.ITERATIONS

    def __post_init__(self) -> None:
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(self.stages))
        check_compression(self)

    def replace(self, **changes) -> Compression:
        return dataclasses.replace(self, **changes)


def check_compression(c: Compression) -> None:
    """Raise ``ValueError`` naming the parameter for any value outside its range or choices."""
    for name, allowed in CHOICES.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(c, name)!r}")
    check_hyperparameters(c.beta, c.max_ratio)
    if c.target_params is not None and not 0.0 < c.target_params <= 100.0:
        raise ValueError(f"target_params is a percentage of the parameters to keep, in (0, 100]; got {c.target_params}")
    if c.max_merges is not None and c.max_merges < 0:
        raise ValueError(f"max_merges must be 0 or more, got {c.max_merges}")
    for name in ("synthetic_bn", "distill", "distill_images"):
        if getattr(c, name) < 0:
            raise ValueError(f"{name} must be 0 or more, got {getattr(c, name)}")
    if c.synthesis_steps is not None and c.synthesis_steps < 1:
        raise ValueError(f"synthesis_steps must be 1 or more, got {c.synthesis_steps}")
    if c.clustering == "kmeans" and c.target_params is None and c.max_ratio >= 1.0:
        raise ValueError("clustering kmeans merges the same share of every group: give max_ratio below 1 (e.g. 0.5) or "
                         "target_params")


@dataclass
class Compressed:
    """A compressed model: its weights (final BN statistics included), the slim module, and how it was made."""

    state_dict: dict[str, Tensor]
    model: nn.Module
    merge: MergeResult  # widths, clusters, merge log, iterations of the merge itself
    compression: Compression  # as run: the rule "auto" and any budget resolved (β, max_ratio, max_merges)
    budget: Budget | None = None
    rule_reason: str = ""
    synthesis: SyntheticImages | None = None
    distillation: Distillation | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # merge, correction, statistics, distillation

    @property
    def widths(self) -> dict[str, int]:
        return self.merge.widths

    @property
    def original_widths(self) -> dict[str, int]:
        return self.merge.original_widths


def resolve_rule(graph: TracedGraph, rule: str, clustering: str = "ifm") -> tuple[str, str]:
    """The merge rule a run uses and why: ``"auto"`` picks the mean rule when the model has activations that are
    not ReLU-like between merged layers; k-means clusters are merged by the mean rule (as Model Folding)."""
    if clustering == "kmeans":
        return "mean", "mean: k-means clusters are merged by the mean rule, as Model Folding does"
    if rule != "auto":
        return rule, ""
    activations = graph.activations
    if activations:
        return "mean", f"mean: the model has {', '.join(activations)} between layers it merges"
    return "official", "official: every activation between merged layers is ReLU-like (or inside a gate)"


def merge_state_dict(arch: Architecture, state_dict: Mapping[str, Tensor], c: Compression,
                     graph: TracedGraph | None = None, device: torch.device | str = "cpu",
                     progress: bool = False) -> MergeResult:
    """Steps 4-6 with the rule resolved (not ``"auto"``) and no budget left to resolve: fold, merge (IFM or
    k-means), reset, correct. The result's ``correction_seconds`` include reading the consumers' Gram matrices."""
    original = state_dict = standard_layout(state_dict)
    graph = graph or arch.trace(state_dict)
    groups = merged_groups = channel_groups(arch, state_dict, c.stages, rule=c.rule, graph=graph)
    fold = c.bn_mode == "fold"
    if fold:  # each BN's producer and eps, from the graph
        state_dict = batchnorm.fold_batchnorm(state_dict, graph.batch_norms)
        merged_groups = batchnorm.without_bn_statistics(groups, graph.batch_norms)
    # the consumers' Gram matrices of the merge's first pass serve the correction (folding changes the consumers)
    keep = c.correction == "weights" and not fold
    partition = kmeans_partition(state_dict, merged_groups, c.max_ratio) if c.clustering == "kmeans" else None
    merger = IterativeMerger(state_dict, merged_groups, dtype=getattr(torch, c.dtype), device=device, rule=c.rule,
                             keep_column_grams=keep)
    if partition is None:
        result = merger.run(c.beta, c.max_ratio, c.order, progress, c.max_merges)
    else:
        result = merger.merge_partition(partition)
    if fold:
        result.state_dict = batchnorm.reset_identity_bn(result.state_dict, graph.batch_norms)
    if c.correction != "none":
        start = time.perf_counter()
        result.state_dict = correct_merged(original, result.state_dict, groups, result.clusters, c.rule,
                                           graph.batch_norms, c.correction, folded=fold,
                                           column_grams=result.column_grams)
        result.correction_seconds = time.perf_counter() - start + merger.column_gram_seconds
    result.column_grams = {}  # (their only use was the correction)
    return result


def parameter_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of ``model``'s parameters (running statistics excluded)."""
    return [name for name, _ in model.named_parameters()]


def resolve_budget(arch: Architecture, state_dict: Mapping[str, Tensor], model: nn.Module, c: Compression,
                   graph: TracedGraph | None = None, device: torch.device | str = "cpu"
                   ) -> tuple[Compression, Budget | None]:
    """Step 3: ``c`` with the β (``ifm`` allocation) or max_ratio (``uniform``; always for k-means) that keeps at
    least ``c.target_params`` % of the parameters (the rule resolved); unchanged without a budget."""
    if c.target_params is None:
        return c, None
    state_dict = standard_layout(state_dict)
    graph = graph or arch.trace(state_dict)
    keys = parameter_keys(model)
    groups = channel_groups(arch, state_dict, c.stages, rule=c.rule, graph=graph)
    if c.allocation == "uniform" or c.clustering == "kmeans":
        found = uniform_budget(state_dict, keys, groups, c.target_params)
        return c.replace(beta=found.beta, max_ratio=found.max_ratio, allocation="uniform"), found
    total = sum(state_dict[k].numel() for k in keys)
    below: dict[float, MergeResult] = {}  # the latest probe under the budget: the bisection's upper β
    plain = c.replace(target_params=None, correction="none", synthetic_bn=0, distill=0, max_merges=None,
                      max_ratio=1.0)

    def params_pct_at(beta: float) -> float:
        result = merge_state_dict(arch, state_dict, plain.replace(beta=beta), graph, device)
        pct = 100.0 * sum(result.state_dict[k].numel() for k in keys) / total
        if pct < c.target_params:
            below.clear()
            below[beta] = result
        return pct

    def prefix_pct(beta: float):
        result = below[beta]

        def kept(n: int) -> float:
            widths = dict(result.original_widths)
            for step in result.merge_log[:n]:
                widths[step.group] -= 1
            return 100.0 * params_at_widths(state_dict, keys, groups, widths) / total
        return kept
    found = ifm_budget(params_pct_at, c.target_params, prefix_pct=prefix_pct)
    if found.params_pct > c.target_params + 5:
        warnings.warn(f"target_params {c.target_params:g}: IFM stops at {found.params_pct:.1f} % of the parameters "
                      "even at β 0.999 (Eq. 9 stops every group); the uniform allocation goes lower", IFMWarning)
    return c.replace(beta=found.beta, max_ratio=found.max_ratio, max_merges=found.max_merges), found


def reestimate_statistics(arch: Architecture, state_dict: Mapping[str, Tensor], batches: Iterable,
                          device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Step 7: ``state_dict`` with every BN's running statistics re-estimated on ``batches`` (tensors, or
    ``(inputs, labels)`` pairs; cumulative average over them)."""
    model = model_for_state_dict(arch, state_dict).to(device)
    batchnorm.recalibrate_bn(model, (((b if isinstance(b, Tensor) else b[0]).to(device), None) for b in batches))
    found = model.state_dict()
    return {k: found[k].detach().cpu() for k in state_dict}


def synthetic_batches(images: Tensor, batch_size: int = CHUNK) -> list[Tensor]:
    """Synthesised images in the chunks they were made in (their statistics were matched per chunk)."""
    return [images[k:k + batch_size] for k in range(0, len(images), batch_size)]


def compress(model: nn.Module | str | Architecture, compression: Compression = Compression(), *,
             state_dict: Mapping[str, Tensor] | None = None, input_size: Sequence[int] | None = None,
             calibration: Iterable | None = None, images: SyntheticImages | None = None,
             distill_inputs: Tensor | None = None, graph: TracedGraph | None = None,
             device: torch.device | str = "cpu",
             progress: bool = False, check: bool = False) -> Compressed:
    """Compress a model: every step of :class:`Compression`, then the slim module.

    Args:
        model: an ``nn.Module`` with its weights, an architecture name (``"VGG16"``, ``"resnet50"``...) or an
            :class:`~ifm.architectures.Architecture`; the latter two need ``state_dict``.
        compression: what to do (default: the official IFM at β 0.1).
        state_dict: the weights (default: the module's own).
        input_size: (C, H, W) to trace the model with and to synthesise images of (default: the architecture's;
            3x224x224 for a module).
        calibration: batches of real inputs to re-estimate the BN statistics on (instead of ``synthetic_bn``).
        images: images already synthesised for this model, at least ``compression.images_needed`` of them
            (``synthetic_bn`` and ``distill`` then use them; e.g. from a cache).
        distill_inputs: real inputs ``(n, C, H, W)`` to distil on instead of synthesised images.
        graph: the model's traced graph, if already at hand.
        device: where the merge's first pass, the synthesis and the re-estimation run.
        progress: show progress bars for the merge and the distillation.
        check: first permute every traced group at random: a changed output means groups the tracer got wrong
            (:class:`~ifm.errors.IFMError`; the command line checks every model it has no description of).
    """
    if isinstance(model, nn.Module):
        arch = module_architecture(model, input_size or (3, 224, 224))
        state_dict = model.state_dict() if state_dict is None else state_dict
    else:
        arch = get_architecture(model, input_size) if isinstance(model, str) else model
        if state_dict is None:
            raise ValueError("compress needs state_dict with an architecture name")
    if compression.synthetic_bn and calibration is not None:
        raise ValueError("give either synthetic_bn (data-free) or calibration batches to re-estimate BN on, not both")
    if compression.distill and distill_inputs is None and not compression.images_needed:
        raise ValueError("distill needs images to distil on: give distill_images (or synthetic_bn) for synthesised "
                         "ones, or distill_inputs")
    if images is not None and images.iterations != compression.synthesis_iterations:
        raise ValueError(f"images were synthesised in {images.iterations} steps; the compression asks for "
                         f"synthesis_steps={compression.synthesis_iterations}")
    if images is not None and len(images.images) < compression.images_needed:
        raise ValueError(f"images holds {len(images.images)} synthesised images; the compression needs "
                         f"{compression.images_needed}")
    state_dict = standard_layout(state_dict)
    graph = graph or arch.trace(state_dict)
    original = model_for_state_dict(arch, state_dict)
    rule, reason = resolve_rule(graph, compression.rule, compression.clustering)
    if check:
        check_groups(arch, state_dict, channel_groups(arch, state_dict, compression.stages, rule=rule, graph=graph))
    c, budget = resolve_budget(arch, state_dict, original, compression.replace(rule=rule), graph, device)
    result = merge_state_dict(arch, state_dict, c, graph, device, progress)
    merged = result.state_dict
    seconds = {"merge": result.seconds, "correction": result.correction_seconds}
    synthesis = None
    start = time.perf_counter()
    synthesised = c.synthetic_bn or (c.distill and distill_inputs is None)
    if synthesised:
        synthesis = images or synthesis_.synthesize_images(original.to(device), arch.input_size, c.images_needed,
                                                           iterations=c.synthesis_iterations, device=device)
    if c.synthetic_bn:
        merged = reestimate_statistics(arch, merged, synthetic_batches(synthesis.images[:c.synthetic_bn]), device)
    elif calibration is not None:
        merged = reestimate_statistics(arch, merged, calibration, device)
    seconds["statistics"] = time.perf_counter() - start
    student = model_for_state_dict(arch, merged)
    distillation = None
    if c.distill:
        inputs = distill_inputs if distill_inputs is not None else synthesis.images[:c.distill_images or None]
        bar = StepBar(f"distilling on {len(inputs)} images")
        try:
            distillation = distill_model(student, original, inputs, c.distill, mix=c.distill_mix, device=device,
                                         progress=bar if progress else None)
        finally:
            bar.close()
        found = student.cpu().state_dict()
        merged = {k: found[k].detach().clone() for k in merged}
        seconds["distillation"] = distillation.seconds
    return Compressed(merged, student, result, c, budget, reason, synthesis, distillation, seconds)


def groups_of(arch: Architecture, state_dict: Mapping[str, Tensor], c: Compression,
              graph: TracedGraph | None = None) -> list[ChannelGroup]:
    """The channel groups a compression merges (its stages, its resolved rule)."""
    return channel_groups(arch, standard_layout(state_dict), c.stages, rule=c.rule,
                          graph=graph or arch.trace(state_dict))
