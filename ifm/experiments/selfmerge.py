"""The self-merge experiment behind the four entry scripts: load, merge, measure, evaluate, record.

Argument names follow the official scripts (``--model_param``, ``--threshold``, ``--max_ratio``,
``--vgg_name``...). Every bad input ends in one :class:`IFMError` line and nothing is written.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from . import data as datasets
from .data import CIFAR10_MEAN, CIFAR10_STD
from ..architectures import ARCHITECTURES, Architecture, get_architecture, model_for_state_dict, num_classes_of
from ..discovery import channel_groups, check_groups, describe_groups
from .cli import cli_main
from ..errors import IFMError
from .evaluate import EvalResult, evaluate, tensor_batches
from .io import append_jsonl, file_digest, load_state_dict_file, read_jsonl, save_state_dict, writable_location
from ..device import pick_device
from .image_cache import synthetic_calibration, synthetic_images_path
from .. import pipeline
from ..pruning import PRUNINGS, prune_to_widths
from ..budget import Budget
from ..merge import DTYPES, ORDERS, MergeResult
from ..pipeline import Compression, compress, reestimate_statistics, resolve_rule, synthetic_batches
from ..metrics import count_flops, count_params
from .run import DEFAULT_RESULTS, RunOptions, RunSpec, add_option_arguments, as_flags, from_args
from ..trace import TracedGraph


# --------------------------------------------------------------------------------------- arguments
def add_merge_arguments(parser: argparse.ArgumentParser, dataset: str, family: str) -> None:
    """Arguments shared by the entry scripts (official names first)."""
    p = parser
    p.add_argument("--model_param", default=None, help="checkpoint: a state dict (or wrapped in state_dict/net/model)")
    if dataset == "cifar10":
        if family == "vgg":
            p.add_argument("--vgg_name", default="VGG16", choices=["VGG11", "VGG13", "VGG16", "VGG19"])
        else:
            p.add_argument("--resnet_name", default="ResNet18", choices=["ResNet18", "ResNet34", "ResNet50"])
    elif family == "any":
        p.add_argument("--arch", required=True, help="a torchvision model (mobilenet_v2, densenet121, resnet50...) "
                                                     "or module:callable returning your nn.Module")
        p.add_argument("--input_size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                       help="input to trace the model with (default 3 224 224; 3 32 32 for CIFAR models)")
        p.add_argument("--list_groups", action="store_true",
                       help="list the channel groups and the frozen spaces (with the reason), then stop")
        p.add_argument("--weights", default=None, help="torchvision weights instead of --model_param, e.g. DEFAULT")
    else:
        default = "vgg16" if family == "vgg" else "resnet50"
        p.add_argument("--arch", default=default, help="torchvision name, e.g. vgg16, vgg16_bn, resnet50")
        p.add_argument("--weights", default=None, help="torchvision weights instead of --model_param, e.g. IMAGENET1K_V1")
    p.add_argument("--threshold", type=float, default=0.1, help="beta of Eq. 9, in (0, 1)")
    p.add_argument("--max_ratio", type=float, default=1.0, help="cap on merges per group, in (0, 1]")
    p.add_argument("--order", default="official", choices=list(ORDERS),
                   help="official: one merge per group per sweep; layerwise: paper Algorithm 1")
    if family in ("resnet", "any"):
        p.add_argument("--stages", type=int, nargs="+", default=None, help="ResNet stages to merge (default: 3 4)")
    p.add_argument("--dtype", default="float64", choices=list(DTYPES), help="distance bookkeeping")
    p.add_argument("--data_root", default="data/cifar10" if dataset == "cifar10" else "data/imagenet")
    if dataset == "cifar10":  # ImageNet cannot be downloaded by torchvision
        p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 if absent")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--batch_size", type=int, default=64 if dataset == "imagenet" else 256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--eval_samples", type=int, default=None, help="evaluate on N test images spread evenly")
    p.add_argument("--no_eval", action="store_true", help="merge only (IFM needs no data)")
    p.add_argument("--save_merged", default=None, help="write the merged state dict here")
    p.add_argument("--overwrite", action="store_true", help="allow --save_merged to replace a file")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="append one JSON line per run here")
    p.add_argument("--no_progress", action="store_true")


def merge_argument_parser(dataset: str, family: str, spec_type: type = RunSpec,
                          **parser_options) -> argparse.ArgumentParser:
    """A parser with the entry scripts' arguments and the options beyond the paper (those of ``spec_type``)."""
    parser = argparse.ArgumentParser(**parser_options)
    add_merge_arguments(parser, dataset, family)
    add_extension_arguments(parser, spec_type)
    if family == "any":
        parser.set_defaults(merge_rule="auto")
    return parser


# --------------------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    arch: Architecture
    state_dict: dict[str, torch.Tensor]
    checkpoint: str  # path or torchvision weights name
    digest: str  # identifies the weights for caches
    normalize: tuple | None  # (mean, std) for CIFAR, if the checkpoint was trained normalised
    model: nn.Module  # the original model with these weights
    merge_rule: str = "official"  # the run's rule ("auto" resolved)
    rule_reason: str = ""  # why "auto" chose it
    graph: TracedGraph | None = None  # the architecture's traced graph (its channel spaces), traced once


def _torchvision_weights(arch: str, weights: str) -> dict[str, torch.Tensor]:
    import torchvision
    try:
        enum = torchvision.models.get_model_weights(arch)
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        raise IFMError(f"unknown --weights {weights!r} for {arch}") from None
    if not datasets.network_reachable("download.pytorch.org"):
        raise IFMError(f"cannot download {arch} {weights}: no network; pass --model_param with a local .pth copy")
    return chosen.get_state_dict(progress=True)


def _training_normalization(checkpoint: Path) -> tuple | None:
    """(mean, std) if ``train_model.py``'s config next to the checkpoint says data.normalize."""
    import yaml
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        cfg = folder / "config.yml"
        if cfg.is_file():
            try:
                if (yaml.safe_load(cfg.read_text()) or {}).get("data", {}).get("normalize"):
                    return CIFAR10_MEAN, CIFAR10_STD
            except yaml.YAMLError:
                return None
            return None
    return None


def load_model(spec: RunSpec, initialise: bool = False) -> LoadedModel:
    """Read the checkpoint (or torchvision weights) and check it fits the architecture. ``initialise``: without
    either, use the model's own initialisation (enough to trace and list its groups)."""
    arch = get_architecture(spec.arch, spec.input_size)
    if initialise and not spec.weights and spec.model_param is None:
        state_dict = arch.build(10 if arch.dataset == "cifar10" else 1000).state_dict()
        checkpoint, digest, normalize = "initialisation", "init", None
    elif spec.weights:
        if spec.model_param:
            raise IFMError("pass either --model_param or --weights, not both")
        state_dict = _torchvision_weights(arch.name, spec.weights)
        checkpoint, digest, normalize = f"torchvision:{arch.name}.{spec.weights}", f"tv:{arch.name}:{spec.weights}", None
    else:
        if spec.model_param is None:
            hint = " or --weights IMAGENET1K_V1" if arch.dataset == "imagenet" else ""
            raise IFMError(f"no checkpoint given: pass --model_param PATH{hint}")
        state_dict = load_state_dict_file(spec.model_param)
        checkpoint, digest = str(spec.model_param), file_digest(spec.model_param)
        normalize = _training_normalization(Path(spec.model_param)) if arch.dataset == "cifar10" else None
    model = model_for_state_dict(arch, state_dict)  # raises IFMError naming the keys that do not fit
    graph = arch.trace(state_dict)
    rule, reason = resolve_rule(graph, spec.merge_rule, "kmeans" if spec.method == "kmeans" else "ifm")
    if spec.arch not in ARCHITECTURES:  # traced groups of a model nobody described: checked once
        check_groups(arch, state_dict, channel_groups(arch, state_dict, spec.stages, rule=rule, graph=graph))
    return LoadedModel(arch, state_dict, checkpoint, digest, normalize, model, rule, reason, graph)


# --------------------------------------------------------------------------------------- evaluation
def _check_eval_samples(spec: RunSpec, available: int) -> None:
    if spec.eval_samples is not None and spec.eval_samples > available:
        raise IFMError(f"--eval_samples {spec.eval_samples} exceeds the {available:,} test images under "
                       f"{spec.data_root}: give at most {available}, or leave it out to use them all")


class Evaluator:
    """Evaluates models on the (possibly subsampled) test split, loading the data once."""

    def __init__(self, loaded: LoadedModel, spec: RunSpec, options: RunOptions, device: torch.device):
        if not spec.evaluates:
            raise ValueError("this run merges only (no data root)")
        self.device, self.spec, self.options, self.loaded = device, spec, options, loaded
        if loaded.arch.dataset == "cifar10":
            full = datasets.load_cifar10(spec.data_root, "test", download=spec.download, progress=options.progress)
            _check_eval_samples(spec, len(full))
            self.data = full.subset(datasets.spread_indices(len(full), spec.eval_samples))
        else:
            full = datasets.imagenet_val(spec.data_root)
            _check_eval_samples(spec, len(full))
            from torch.utils.data import Subset
            self.data = Subset(full, datasets.spread_indices(len(full), spec.eval_samples).tolist())
        outputs = num_classes_of(loaded.state_dict)
        if len(full.classes) != outputs:
            raise IFMError(f"{spec.data_root} has {len(full.classes)} classes but the checkpoint's classifier has "
                           f"{outputs} outputs: labels would not match; check --data_root")
        self.total = len(self.data)

    def batches(self) -> Iterable:
        if isinstance(self.data, datasets.TensorImages):
            mean, std = self.loaded.normalize or (None, None)
            return tensor_batches(self.data, self.options.batch_size, self.device, mean, std)
        from torch.utils.data import DataLoader
        return DataLoader(self.data, batch_size=self.options.batch_size, num_workers=self.options.workers)

    def __call__(self, model: nn.Module, desc: str) -> EvalResult:
        return evaluate(model.to(self.device), self.batches(), self.total, self.device, desc,
                        progress=self.options.progress)

    def train_batches(self, n: int) -> Iterable:
        """N training images spread over the training split (for BN recalibration)."""
        if self.loaded.arch.dataset != "cifar10":
            raise IFMError("--recalibrate_bn is implemented for CIFAR-10 models")
        train = datasets.load_cifar10(self.spec.data_root, "train", download=self.spec.download,
                                      progress=self.options.progress)
        subset = train.subset(datasets.spread_indices(len(train), n))
        mean, std = self.loaded.normalize or (None, None)
        return tensor_batches(subset, self.options.batch_size, self.device, mean, std)

    def baseline(self, model: nn.Module, cache_path: Path) -> EvalResult:
        """The original model's accuracy, cached per checkpoint next to the results."""
        key = {"digest": self.loaded.digest, "data_root": self.spec.record_fields()["data_root"],
               "data": getattr(self.data, "source", ""), "eval_samples": self.total,
               "normalize": bool(self.loaded.normalize)}
        for record in read_jsonl(cache_path):
            if record.get("key") == key:
                return EvalResult(record["accuracy"], record["loss"], record["samples"])
        result = self(model, "eval original")
        append_jsonl(cache_path, {"key": key, "accuracy": result.accuracy, "loss": result.loss,
                                  "samples": result.samples})
        return result


# --------------------------------------------------------------------------------------- running
def merge_loaded(loaded: LoadedModel, spec: RunSpec, device: torch.device, progress: bool = False) -> MergeResult:
    """The run's merge (no budget left to resolve; see :func:`ifm.pipeline.merge_state_dict`)."""
    return pipeline.merge_state_dict(loaded.arch, loaded.state_dict, spec.compression(loaded.merge_rule),
                                     loaded.graph, device, progress)


def merge_weights(loaded: LoadedModel, beta: float, max_ratio: float = 1.0, order: str = "official",
                  dtype: str = "float64", bn_mode: str = "official", stages: Sequence[int] | None = None,
                  device: torch.device | str = "cpu", progress: bool = False, rule: str = "official",
                  bn_correction: str = "none", clustering: str = "ifm", max_merges: int | None = None) -> MergeResult:
    """IFM (or k-means clusters, ``clustering="kmeans"``) on the loaded weights with these options: the
    pipeline's merge steps (:func:`ifm.pipeline.merge_state_dict`)."""
    compression = Compression(beta=beta, max_ratio=max_ratio, order=order, dtype=dtype, bn_mode=bn_mode,
                              stages=stages, rule=rule, correction=bn_correction, clustering=clustering,
                              max_merges=max_merges)
    return pipeline.merge_state_dict(loaded.arch, loaded.state_dict, compression, loaded.graph, device, progress)


def resolve_budget(loaded: LoadedModel, spec: RunSpec, device: torch.device) -> tuple[RunSpec, Budget | None]:
    """``spec`` with the β, max_ratio and max_merges its parameter budget resolves to (unchanged without one)."""
    compression, budget = pipeline.resolve_budget(loaded.arch, loaded.state_dict, loaded.model,
                                                  spec.compression(loaded.merge_rule), loaded.graph, device)
    return spec.resolved(compression), budget


def baseline_state_dicts(loaded: LoadedModel, spec: RunSpec, widths: dict) -> list[dict]:
    """Pruning baselines (``spec.method`` l1 or random) at IFM's widths; random: one per seed."""
    groups = channel_groups(loaded.arch, loaded.state_dict, spec.stages, rule=loaded.merge_rule, graph=loaded.graph)
    seeds = range(spec.seeds) if spec.method == "random" else [0]
    return [prune_to_widths(loaded.state_dict, groups, widths, spec.method, seed) for seed in seeds]


def validate(spec: RunSpec, options: RunOptions) -> None:
    """Checks that need no work, done before anything is computed or written."""
    try:
        spec.compression(spec.merge_rule if spec.merge_rule != "auto" else "official")
    except ValueError as exc:
        raise IFMError(as_flags(str(exc))) from None
    save = options.save_merged
    if save and Path(save).exists() and not options.overwrite:
        raise IFMError(f"{save} exists; choose another --save_merged path or pass --overwrite")
    inputs = {Path(p).resolve() for p in (spec.model_param,) if p}
    results = writable_location(options.results, "--results").resolve()
    if results in inputs or (save and results == Path(save).resolve()):
        raise IFMError(f"--results {options.results} is the checkpoint or --save_merged; give the results their own file")
    if save and Path(writable_location(save, "--save_merged")).resolve() in inputs:
        raise IFMError(f"--save_merged {save} is the input checkpoint; choose another path")
    if spec.evaluates:
        writable_location(baseline_cache(options), "the accuracy cache beside --results:")
    if spec.eval_samples is not None and spec.eval_samples <= 0:
        raise IFMError(f"--eval_samples must be positive, got {spec.eval_samples}")
    if options.batch_size <= 0:
        raise IFMError(f"--batch_size must be positive, got {options.batch_size}")
    if options.workers < 0:
        raise IFMError(f"--workers must be 0 or more, got {options.workers}")
    if spec.method == "random" and spec.seeds <= 0:
        raise IFMError(f"--seeds must be positive, got {spec.seeds}")
    if spec.recalibrate_bn < 0:
        raise IFMError(f"--recalibrate_bn must be 0 or more, got {spec.recalibrate_bn}")
    if spec.synthetic_bn < 0:
        raise IFMError(f"--synthetic_bn must be 0 or more, got {spec.synthetic_bn}")
    if spec.synthetic_bn and spec.recalibrate_bn:
        raise IFMError("--synthetic_bn and --recalibrate_bn both re-estimate the BN statistics: give one of them")
    if spec.recalibrate_bn and not spec.evaluates:
        raise IFMError(f"--recalibrate_bn {spec.recalibrate_bn} re-estimates BN statistics on training images: give "
                       "--data_root (without --no_eval), or --synthetic_bn N for data-free images")
    if spec.allocation != "ifm" and spec.target_params is None:
        raise IFMError(f"--allocation {spec.allocation} applies with --target_params P; give the budget too")


def baseline_cache(options: RunOptions) -> Path:
    """Where the original model's accuracy is cached, beside the results file."""
    return Path(options.results).parent / "baseline_cache.jsonl"


def run_self_merge(spec: RunSpec, options: RunOptions, loaded: LoadedModel | None = None,
                   evaluator: Evaluator | None = None) -> dict:
    """One self-merge run through :func:`ifm.pipeline.compress`; returns the JSON record (also appended to
    ``options.results``). BN statistics re-estimated on synthetic or training images are in the state dict that
    is evaluated, saved and recorded."""
    validate(spec, options)
    device = pick_device(options.device)
    loaded = loaded or load_model(spec)
    if spec.evaluates and evaluator is None:
        evaluator = Evaluator(loaded, spec, options, device)  # fails on a bad data root before any work
    original = loaded.model
    images = cached = calibration = None
    if spec.synthetic_bn:
        images, cached = synthetic_calibration(original, loaded.arch.input_size, loaded.digest, spec.synthetic_bn,
                                               options.results, device, options.progress)
    elif spec.recalibrate_bn:
        calibration = list(evaluator.train_batches(spec.recalibrate_bn))
    pruning = spec.method in PRUNINGS  # pruned at the widths of the IFM run, then re-estimated the same way
    compression = spec.compression(loaded.merge_rule)
    done = compress(loaded.arch, compression.replace(synthetic_bn=0) if pruning else compression,
                    state_dict=loaded.state_dict, graph=loaded.graph, images=images,
                    calibration=None if pruning else calibration, device=device, progress=options.progress)
    spec = spec.resolved(done.compression)
    merged_states = [done.state_dict]
    if pruning:
        merged_states = baseline_state_dicts(loaded, spec, done.widths)
        batches = synthetic_batches(images.images) if images is not None else calibration
        if batches is not None:
            merged_states = [reestimate_statistics(loaded.arch, s, batches, device) for s in merged_states]
    merged = done.model if not pruning else model_for_state_dict(loaded.arch, merged_states[0])
    record = make_record(loaded, spec, done.merge, original, merged, device)
    if spec.synthetic_bn:
        record["synthesis"] = {"images": spec.synthetic_bn, "iterations": images.iterations, "cached": cached,
                               "seconds": images.seconds, "start_loss": images.start_loss,
                               "final_loss": images.final_loss, "path": str(synthetic_images_path(
                                   options.results, loaded.digest, spec.synthetic_bn))}
    if done.budget is not None:
        record["budget_probes"] = done.budget.probes
    if spec.evaluates:
        before = evaluator.baseline(original, baseline_cache(options))
        runs = [evaluator(merged if k == 0 else model_for_state_dict(loaded.arch, state), "eval merged")
                for k, state in enumerate(merged_states)]
        accs = torch.tensor([r.accuracy for r in runs])
        record.update(acc_before=before.accuracy, acc_after=accs.mean().item(), loss_before=before.loss,
                      loss_after=sum(r.loss for r in runs) / len(runs), eval_samples=runs[0].samples)
        if len(runs) > 1:
            record.update(acc_after_std=accs.std().item(), acc_after_runs=accs.tolist())
    if options.save_merged:
        save_state_dict(merged_states[0], options.save_merged, overwrite=options.overwrite)
        record["saved_to"] = str(options.save_merged)
    append_jsonl(options.results, record)
    return record


def run_identity(spec: RunSpec, loaded: LoadedModel, evaluator: Evaluator | None) -> dict:
    """The identifying fields a run of ``spec`` on ``loaded`` writes into its record (``make_record`` starts from
    them; ``eval_samples`` is filled in after evaluation)."""
    return {"model": loaded.arch.name, "checkpoint": loaded.checkpoint, "checkpoint_digest": loaded.digest,
            **spec.record_fields(), "merge_rule": loaded.merge_rule,
            "eval_samples": None if evaluator is None else evaluator.total}


def make_record(loaded: LoadedModel, spec: RunSpec, result: MergeResult, original: nn.Module,
                merged: nn.Module, device: torch.device) -> dict:
    size = loaded.arch.input_size
    params_before, params_after = count_params(original), count_params(merged)
    flops_before, flops_after = count_flops(original, size), count_flops(merged, size)
    return {
        "model": loaded.arch.name, "dataset": loaded.arch.dataset, **run_identity(spec, loaded, None),
        "widths": result.widths, "original_widths": result.original_widths, "n_merges": result.n_merges,
        "params_before": params_before, "params_after": params_after,
        "params_pct": 100.0 * params_after / params_before,
        "flops_before": flops_before, "flops_after": flops_after, "flops_pct": 100.0 * flops_after / flops_before,
        "acc_before": None, "acc_after": None, "loss_before": None, "loss_after": None,
        "merge_seconds": result.seconds, "correction_seconds": result.correction_seconds,
        "iterations": result.iterations, "device": str(device),
        "torch_version": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({"merge_rule_reason": loaded.rule_reason} if loaded.rule_reason else {}),
    }


def format_record(record: dict) -> str:
    """The short before/after table printed at the end of a run."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)
    lines = [f"{record['model']} ({record['dataset']})  beta={record['beta']}  max_ratio={record['max_ratio']}  "
             f"order={record['order']}  method={record['method']}"
             + (f"  merge rule {record.get('merge_rule_reason') or record.get('merge_rule')}"
                if record.get("merge_rule", "official") != "official" or record.get("merge_rule_reason") else "")
             + (f"  bn_correction={record['bn_correction']}" if record.get("bn_correction", "none") != "none" else "")
             + (f"  BN re-estimated on {record['synthetic_bn']} synthetic images" if record.get("synthetic_bn") else "")
             + (f"  BN re-estimated on {record['recalibrate_bn']} training images" if record.get("recalibrate_bn")
                else "")
             + (f"  budget {record['target_params']:g}% ({record['allocation']} allocation)"
                if record.get("target_params") is not None else ""),
             f"{'':10s}{'before':>16s}{'after':>16s}{'%':>9s}",
             f"{'accuracy':10s}{fmt(record['acc_before'], '16.2f')}{fmt(record['acc_after'], '16.2f')}",
             f"{'loss':10s}{fmt(record['loss_before'], '16.4f')}{fmt(record['loss_after'], '16.4f')}",
             f"{'params':10s}{record['params_before']:16,d}{record['params_after']:16,d}{record['params_pct']:9.2f}",
             f"{'FLOPs':10s}{record['flops_before']:16,d}{record['flops_after']:16,d}{record['flops_pct']:9.2f}",
             f"merges: {record['n_merges']} in {record['merge_seconds']:.2f}s ({record['iterations']} iterations)"
             + (f"; evaluated on {record['eval_samples']} images" if record['eval_samples'] else ""),
             "widths: " + ", ".join(f"{k}={v}/{record['original_widths'][k]}" for k, v in record["widths"].items())]
    made = record.get("synthesis")
    if made:
        lines.append(f"synthetic images: {made['images']} "
                     + (f"reused from {made['path']} (made earlier for this checkpoint)" if made["cached"] else
                        f"made in {made['seconds']:.0f} s and kept in {made['path']} (reused by later runs of this "
                        "checkpoint)"))
    return "\n".join(lines)


def cli(dataset: str, family: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``*_self_merge.py`` scripts (``family="any"``: ``scripts/self_merge.py``, any CNN): one
    line on stderr and exit 2 on bad input."""
    what = "any CNN" if family == "any" else f"a {dataset} {family.upper()}"
    parser = merge_argument_parser(dataset, family, description=f"Iterative Feature Merging on {what}")
    args = parser.parse_args(argv)
    spec, options = from_args(args)

    def main() -> None:
        if getattr(args, "list_groups", False):
            print(list_groups(spec))
            return
        record = run_self_merge(spec, options)
        print(format_record(record))
        print(f"results appended to {options.results}")
    return cli_main(main)


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/self_merge.py`` and the ``ifm`` command: IFM on any CNN."""
    return cli("imagenet", "any", argv)


def list_groups(spec: RunSpec) -> str:
    """The channel groups of the run's model and its frozen spaces (``--list_groups``)."""
    loaded = load_model(spec, initialise=True)
    groups = channel_groups(loaded.arch, loaded.state_dict, spec.stages, rule=loaded.merge_rule, graph=loaded.graph)
    text = describe_groups(loaded.graph, groups, loaded.merge_rule, loaded.arch, spec.stages)
    return text + (f"\nmerge rule {loaded.rule_reason}" if loaded.rule_reason else "")


def add_extension_arguments(parser: argparse.ArgumentParser, spec_type: type = RunSpec) -> None:
    """Options beyond the paper, one per flagged field of the run description (their defaults keep the official
    behaviour; see :func:`ifm.experiments.run.option`)."""
    add_option_arguments(parser, spec_type)
