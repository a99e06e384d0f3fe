"""The typed description of a self-merge run, built once at the command-line edge.

:class:`RunSpec` holds every setting that changes a run's result: it becomes the record's fields, the
sweep's skip key and, with the checkpoint's digest, the baseline cache key. :class:`RunOptions` holds how
the run is executed and where its outputs go, none of which changes the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RESULTS = "results/self_merge.jsonl"
METHODS = ("ifm", "l1", "random", "kmeans")
MERGE_RULES = ("official", "mean", "auto")
BN_CORRECTIONS = ("none", "rows", "weights")
ALLOCATIONS = ("ifm", "uniform")


@dataclass(frozen=True)
class RunSpec:
    """What a self-merge run computes (frozen: derive variants with :meth:`replace`)."""
    arch: str
    beta: float = 0.1  # the official scripts' default threshold
    model_param: str | None = None  # checkpoint path, or None with ``weights``
    weights: str | None = None  # torchvision weights name (ImageNet)
    max_ratio: float = 1.0
    order: str = "official"
    stages: tuple[int, ...] | None = None  # ResNets; None: the official (3, 4)
    dtype: str = "float64"
    bn_mode: str = "official"
    recalibrate_bn: int = 0  # training images for BN re-estimation after merging
    synthetic_bn: int = 0  # or: images synthesised from the original BN statistics (data-free, ifm.synthesis)
    method: str = "ifm"  # or a pruning baseline at IFM's widths: l1, random
    seeds: int = 5  # random pruning only
    data_root: str | None = None  # None: merge only, no evaluation
    eval_samples: int | None = None  # None: the whole test split
    download: bool = False  # let torchvision download CIFAR-10
    input_size: tuple[int, ...] | None = None  # (C, H, W) to trace the model with; None: the architecture's
    merge_rule: str = "official"  # or "mean" (rows averaged, columns summed), or "auto": mean when needed
    bn_correction: str = "none"  # data-free repair of merged channels: "rows" or "weights" (ifm.correction)
    target_params: float | None = None  # keep at least this % of the parameters (β or max_ratio found for it)
    allocation: str = "ifm"  # with target_params: "ifm" (bisection over β) or "uniform" (one share for all groups)
    max_merges: int | None = None  # stop after this many merges (a budget's β allocation sets it)

    def __post_init__(self):
        for name in ("stages", "input_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.merge_rule not in MERGE_RULES:
            raise ValueError(f"merge_rule must be one of {MERGE_RULES}, got {self.merge_rule!r}")
        if self.bn_correction not in BN_CORRECTIONS:
            raise ValueError(f"bn_correction must be one of {BN_CORRECTIONS}, got {self.bn_correction!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)

    @property
    def evaluates(self) -> bool:
        return self.data_root is not None

    def record_fields(self) -> dict:
        """The settings as written into the run's record (and compared to skip a done run)."""
        return {"method": self.method, "beta": self.beta, "max_ratio": self.max_ratio, "order": self.order,
                "stages": None if self.stages is None else list(self.stages), "dtype": self.dtype,
                "bn_mode": self.bn_mode, "recalibrate_bn": self.recalibrate_bn, "synthetic_bn": self.synthetic_bn,
                "merge_rule": self.merge_rule,
                "seeds": self.seeds if self.method == "random" else None,
                "bn_correction": self.bn_correction, "target_params": self.target_params,
                "allocation": self.allocation if self.target_params is not None else None,
                "max_merges": self.max_merges,
                "data_root": str(Path(self.data_root).resolve()) if self.evaluates else None}


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed and where it writes; none of these change its numbers."""
    results: str = DEFAULT_RESULTS
    save_merged: str | None = None
    overwrite: bool = False
    device: str | None = None
    batch_size: int = 256
    workers: int = 4
    progress: bool = True

    def replace(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)


def arch_of(args: argparse.Namespace) -> str:
    """The architecture argument of whichever entry script parsed ``args``."""
    for attr in ("vgg_name", "resnet_name", "arch"):
        if getattr(args, attr, None):
            return getattr(args, attr)
    raise ValueError("no architecture argument")


def from_args(args: argparse.Namespace) -> tuple[RunSpec, RunOptions]:
    """The run an entry script's parsed arguments describe (see ``selfmerge.add_merge_arguments``)."""
    get = vars(args).get
    spec = RunSpec(arch=arch_of(args), beta=args.threshold, model_param=get("model_param"), weights=get("weights"),
                   max_ratio=args.max_ratio, order=args.order, stages=get("stages"), dtype=args.dtype,
                   bn_mode=get("bn_mode") or "official", recalibrate_bn=get("recalibrate_bn") or 0,
                   synthetic_bn=get("synthetic_bn") or 0,
                   method=get("baseline") or "ifm", seeds=get("seeds", 5),
                   data_root=None if args.no_eval else args.data_root, eval_samples=args.eval_samples,
                   download=bool(get("download")), input_size=get("input_size"),
                   merge_rule=get("merge_rule") or "official", bn_correction=get("bn_correction") or "none",
                   target_params=get("target_params"), allocation=get("allocation") or "ifm",
                   max_merges=get("max_merges"))
    options = RunOptions(results=args.results, save_merged=args.save_merged, overwrite=args.overwrite,
                         device=args.device, batch_size=args.batch_size, workers=args.workers,
                         progress=not args.no_progress)
    return spec, options
