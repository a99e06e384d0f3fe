"""β sweeps: one self-merge run per β, appended to one results file, resumable.

A β whose record (same model, checkpoint, method and settings) is already in the results file is
skipped, so an interrupted sweep restarted with the same command loses nothing and repeats nothing.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Iterable, Sequence

from .errors import IFMError
from .io import read_jsonl
from .selfmerge import Evaluator, load_model, pick_device, run_self_merge, validate

PAPER_BETAS: tuple[float, ...] = (0.01, 0.03, 0.05, 0.07, 0.1, 0.12, 0.14, 0.15, 0.18, 0.2)
OFFICIAL_EXTRA_BETAS: tuple[float, ...] = (0.22, 0.24, 0.25, 0.26, 0.28, 0.3)
SAME_RUN_FIELDS = ("model", "checkpoint", "checkpoint_digest", "method", "max_ratio", "order", "stages", "dtype",
                   "eval_samples", "bn_mode", "recalibrate_bn", "seeds", "data_root")


def run_key(record: dict) -> tuple:
    """What identifies a run besides β (fields absent from older records count as None)."""
    return tuple(str(record.get(f)) for f in SAME_RUN_FIELDS)


def matching_records(results: str, key: tuple) -> dict[float, dict]:
    """Records of ``results`` with this key, by β (the last one wins)."""
    return {float(r["beta"]): r for r in read_jsonl(results)
            if isinstance(r.get("beta"), (int, float)) and run_key(r) == key}


def sweep(args: argparse.Namespace, betas: Sequence[float], log=print) -> list[dict]:
    """Run ``args`` for every β not yet in ``args.results``; returns the records of all ``betas``."""
    several = len(betas) > 1
    recorded = {r.get("saved_to") for r in read_jsonl(args.results)}
    for beta in betas:  # fail before any work (a merged model that a done β saved is not in the way)
        run_args = _with_beta(args, beta, several)
        run_args.overwrite = args.overwrite or run_args.save_merged in recorded
        validate(run_args)
    device = pick_device(args.device)
    loaded = load_model(args)
    evaluator = None if args.no_eval else Evaluator(loaded, args, device)
    records: list[dict] = []
    for beta in betas:
        run_args = _with_beta(args, beta, several)
        key = run_key(_expected_record(run_args, loaded, evaluator))
        done = matching_records(args.results, key)
        if beta in done:
            log(f"beta={beta}: already in {args.results}, skipped")
            records.append(done[beta])
            continue
        record = run_self_merge(run_args, loaded=loaded, evaluator=evaluator)
        acc = "-" if record["acc_after"] is None else f"{record['acc_after']:.2f}%"
        log(f"beta={beta}: {record['n_merges']} merges, params {record['params_pct']:.2f}%, accuracy {acc}")
        records.append(record)
    return records


def _with_beta(args: argparse.Namespace, beta: float, several: bool = True) -> argparse.Namespace:
    """The arguments of one β; with several β values, ``--save_merged m.pt`` becomes ``m_beta0.1.pt``."""
    run_args = copy.copy(args)
    run_args.threshold = beta
    if args.save_merged and several:
        path = Path(args.save_merged)
        run_args.save_merged = str(path.with_name(f"{path.stem}_beta{beta:g}{path.suffix}"))
    return run_args


def _expected_record(args: argparse.Namespace, loaded, evaluator) -> dict:
    """The identifying fields a run of ``args`` will write (see ``make_record``)."""
    from .selfmerge import arch_name, record_settings
    record = record_settings(args)
    record.update(model=arch_name(args), checkpoint=loaded.checkpoint, checkpoint_digest=loaded.digest,
                  eval_samples=None if evaluator is None else evaluator.total)
    return record


def format_sweep_table(records: Sequence[dict]) -> str:
    """β / merges / remaining params % / FLOPs % / accuracy, one line per record."""
    lines = [f"{'beta':>6} {'merges':>7} {'params %':>9} {'FLOPs %':>8} {'accuracy':>9}"]
    for r in records:
        acc = "-" if r.get("acc_after") is None else f"{r['acc_after']:.2f}%"
        lines.append(f"{r['beta']:>6g} {r['n_merges']:>7d} {r['params_pct']:>9.2f} {r['flops_pct']:>8.2f} {acc:>9}")
    return "\n".join(lines)


def shard_of(betas: Sequence[float], shard: str | None) -> list[float]:
    """``"k/N"``: every N-th β starting at the k-th (k in 1..N), so N jobs of an array split a sweep."""
    if shard is None:
        return list(betas)
    try:
        k, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise IFMError(f"--shard expects k/N with integers, e.g. 1/4; got {shard!r}") from None
    if not 1 <= k <= n:
        raise IFMError(f"--shard {shard}: k must be in 1..N")
    return list(betas)[k - 1::n]


def parse_betas(values: Iterable[str]) -> list[float]:
    """``["paper"]``, ``["official"]`` or numbers."""
    betas: list[float] = []
    for value in values:
        if value == "paper":
            betas += PAPER_BETAS
        elif value == "official":
            betas += PAPER_BETAS + OFFICIAL_EXTRA_BETAS
        else:
            betas.append(float(value))
    return sorted(set(betas))
