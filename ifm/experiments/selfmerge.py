"""One self-merge run: the run description's compression (:func:`ifm.pipeline.compress`) on the loaded weights,
measured (parameters, FLOPs), evaluated and recorded as one JSON line; the pruning baselines at IFM's widths; the
checks a run makes before any work."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..architectures import model_for_state_dict
from ..budget import Budget
from ..device import pick_device
from ..discovery import channel_groups
from ..errors import IFMError
from .evaluate import Evaluator
from .image_cache import synthetic_calibration, synthetic_images_path
from .io import append_jsonl, save_state_dict, writable_location
from .loading import LoadedModel, load_model
from ..merge import MergeResult
from ..metrics import count_flops, count_params
from .. import pipeline
from ..pipeline import Compression, compress, reestimate_statistics, synthetic_batches
from ..pruning import PRUNINGS, prune_to_widths
from .run import RunOptions, RunSpec, as_flags


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
    if spec.synthetic_bn and spec.recalibrate_bn:
        raise IFMError("--synthetic_bn and --recalibrate_bn both re-estimate the BN statistics: give one of them")
    if spec.recalibrate_bn and not spec.evaluates:
        raise IFMError(f"--recalibrate_bn {spec.recalibrate_bn} re-estimates BN statistics on training images: give "
                       "--data_root (without --no_eval), or --synthetic_bn N for data-free images")
    if spec.allocation != "ifm" and spec.target_params is None:
        raise IFMError(f"--allocation {spec.allocation} applies with --target_params P; give the budget too")
    validate_distillation(spec)


def validate_distillation(spec: RunSpec) -> None:
    """``--distill``'s checks: images to distil on, data when they are real, a merged model to train."""
    if not spec.distill:
        return
    if spec.method in PRUNINGS:
        raise IFMError(f"--distill trains merged models; --baseline {spec.method} prunes: drop one of them")
    if spec.distill_data == "real":
        if not spec.distill_images:
            raise IFMError("--distill_data real needs --distill_images N, the number of training images to distil on")
        if not spec.evaluates:
            raise IFMError("--distill_data real distils on training images: give --data_root (without --no_eval)")
    elif not spec.compression("official").images_needed:
        raise IFMError(f"--distill {spec.distill} needs images: give --distill_images N (synthesised from the "
                       "original network) or --synthetic_bn N, or --distill_data real --distill_images N")


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
    images = cached = calibration = distill_inputs = None
    compression = spec.compression(loaded.merge_rule)
    n_images = compression.images_needed
    if n_images:
        images, cached = synthetic_calibration(original, loaded.arch.input_size, loaded.digest, n_images,
                                               options.results, device, compression.synthesis_iterations,
                                               options.progress)
    if spec.recalibrate_bn:
        calibration = list(evaluator.train_batches(spec.recalibrate_bn))
    if spec.distill and spec.distill_data == "real":  # (the BN re-estimation's images when they are the same ones)
        batches = calibration if spec.recalibrate_bn == spec.distill_images else \
            evaluator.train_batches(spec.distill_images)
        distill_inputs = torch.cat([b[0] for b in batches]).cpu()
    pruning = spec.method in PRUNINGS  # pruned at the widths of the IFM run, then re-estimated the same way
    done = compress(loaded.arch, compression.replace(synthetic_bn=0) if pruning else compression,
                    state_dict=loaded.state_dict, graph=loaded.graph, images=images,
                    calibration=None if pruning else calibration, distill_inputs=distill_inputs, device=device,
                    progress=options.progress)
    spec = spec.resolved(done.compression)
    merged_states = [done.state_dict]
    if pruning:
        merged_states = baseline_state_dicts(loaded, spec, done.widths)
        batches = synthetic_batches(images.images) if images is not None else calibration
        if batches is not None:
            merged_states = [reestimate_statistics(loaded.arch, s, batches, device) for s in merged_states]
    merged = done.model if not pruning else model_for_state_dict(loaded.arch, merged_states[0])
    record = make_record(loaded, spec, done.merge, original, merged, device)
    if images is not None:
        record["synthesis"] = {"images": n_images, "iterations": images.iterations, "cached": cached,
                               "seconds": images.seconds, "start_loss": images.start_loss,
                               "final_loss": images.final_loss, "path": str(synthetic_images_path(
                                   options.results, loaded.digest, n_images, images.iterations))}
    if done.distillation is not None:
        d = done.distillation
        record["distillation"] = {"steps": d.steps, "images": d.images, "data": spec.distill_data,
                                  "start_loss": d.start_loss, "final_loss": d.final_loss, "seconds": d.seconds}
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
             + (f"  distilled {record['distillation']['steps']} steps on {record['distillation']['images']} "
                f"{record['distillation']['data']} images"
                + (f", {record['distill_mix']}" if record.get("distill_mix") else "")
                + f" (loss {record['distillation']['start_loss']:.3g} → "
                f"{record['distillation']['final_loss']:.3g})" if record.get("distillation") else "")
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
