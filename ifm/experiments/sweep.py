"""β sweeps: one self-merge run per β, appended to one results file, resumable.

A β whose record (same model, checkpoint, method and settings) is already in the results file is
skipped, so an interrupted sweep restarted with the same command loses nothing and repeats nothing.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import IFMError
from .io import read_jsonl
from .run import RunOptions, RunSpec, identity_fields, record_defaults
from .evaluate import Evaluator
from .loading import load_model
from ..device import pick_device
from .selfmerge import run_identity, run_self_merge, validate

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PAPER_BETAS: tuple[float, ...] = (0.01, 0.03, 0.05, 0.07, 0.1, 0.12, 0.14, 0.15, 0.18, 0.2)
OFFICIAL_EXTRA_BETAS: tuple[float, ...] = (0.22, 0.24, 0.25, 0.26, 0.28, 0.3)


def same_run_fields(spec_type: type = RunSpec) -> tuple[str, ...]:
    """The record fields that identify a run besides β: the weights, every identity field of ``spec_type`` and the
    evaluated images (a field added to the run description joins them)."""
    return ("model", "checkpoint", "checkpoint_digest",
            *(f for f in identity_fields(spec_type) if f != "beta"), "eval_samples")


SAME_RUN_FIELDS = same_run_fields()


def run_key(record: dict, spec_type: type = RunSpec) -> tuple:
    """What identifies a run besides β (a field absent or null in an older record had its default). A run with a
    parameter budget is identified by the budget: its β and max_ratio are what the budget chose."""
    budget = record.get("target_params") is not None
    return tuple("None" if budget and f in ("max_ratio", "max_merges") else str(record_value(record, f, spec_type))
                 for f in same_run_fields(spec_type))


def record_value(record: dict, field: str, spec_type: type = RunSpec):
    """A record's value of an identity field; absent or null (records written before the field existed, or with
    it unset) is the field's default."""
    value = record.get(field)
    return record_defaults(spec_type).get(field) if value is None else value


def matching_records(results: str, key: tuple) -> dict[float, dict]:
    """Records of ``results`` with this key, by β (the last one wins)."""
    return {float(r["beta"]): r for r in read_jsonl(results)
            if isinstance(r.get("beta"), (int, float)) and run_key(r) == key}


def sweep(spec: RunSpec, options: RunOptions, betas: Sequence[float], log=print) -> list[dict]:
    """Run ``spec`` for every β not yet in ``options.results``; returns the records of all ``betas``.

    Concurrent sweeps on one results file share the work: a β another process is computing is left for
    later, then taken from its record."""
    try:
        return _sweep(spec, options, betas, log)
    finally:  # (also on Ctrl-C) the claims file goes when no other process holds a claim in it
        remove_claims_file(options.results)


def _sweep(spec: RunSpec, options: RunOptions, betas: Sequence[float], log=print) -> list[dict]:
    several = len(betas) > 1
    saved = check_sweep(spec, options, betas)
    device = pick_device(options.device)
    loaded = load_model(spec)
    evaluator = Evaluator(loaded, spec, options, device) if spec.evaluates else None
    records: dict[float, dict] = {}
    pending, wait = list(betas), False
    while pending:
        busy = []
        for beta in pending:
            run_spec, run_options = _for_beta(spec, options, beta, several, saved)
            key = run_key(run_identity(run_spec, loaded, evaluator))
            with run_claim(options.results, key, beta, wait) as claimed:
                if not claimed:
                    busy.append(beta)
                    continue
                done = matching_records(options.results, key)
                if beta in done:
                    log(f"beta={beta}: already in {options.results}, skipped")
                    records[beta] = done[beta]
                    continue
                record = run_self_merge(run_spec, run_options, loaded=loaded, evaluator=evaluator)
            acc = "-" if record["acc_after"] is None else f"{record['acc_after']:.2f}%"
            log(f"beta={beta}: {record['n_merges']} merges, params {record['params_pct']:.2f}%, accuracy {acc}")
            records[beta] = record
        if busy:
            log(f"beta {', '.join(f'{b:g}' for b in busy)}: being computed by another process, waiting")
        pending, wait = busy, True
    return [records[beta] for beta in betas]


def check_sweep(spec: RunSpec, options: RunOptions, betas: Sequence[float]) -> set:
    """Validate every β's run before any work (a merged model that a done β saved is not in the way); returns the
    merged-model files that recorded runs saved."""
    saved = {r.get("saved_to") for r in read_jsonl(options.results)}
    for beta in betas:
        validate(*_for_beta(spec, options, beta, len(betas) > 1, saved))
    return saved


@contextmanager
def run_claim(results: str | Path, key: tuple, beta: float, wait: bool) -> Iterator[bool]:
    """Hold the claim on one run of a results file while computing it (yields False if another process holds it
    and ``wait`` is False). A lock of one byte, chosen by the run, of the hidden ``.<results>.lock`` beside the
    results; the system releases it when its process dies, so a killed sweep blocks nothing."""
    if fcntl is None:  # no POSIX locks (Windows): no sharing of work
        yield True
        return
    results = Path(results)
    lock_path = results.with_name(f".{results.name}.lock")
    offset = int.from_bytes(hashlib.sha256(repr((key, float(beta))).encode()).digest()[:4], "big") >> 1
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), 1, offset)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def remove_claims_file(results: str | Path) -> None:
    """Remove the hidden claims file of ``results`` unless another process holds a claim in it (then it stays for
    that process, which removes it when it ends)."""
    if fcntl is None:
        return
    results = Path(results)
    lock_path = results.with_name(f".{results.name}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the whole file: no claim of another process in it
        os.unlink(lock_path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _for_beta(spec: RunSpec, options: RunOptions, beta: float, several: bool, saved: set = frozenset()
              ) -> tuple[RunSpec, RunOptions]:
    """The run of one β; with several β values ``--save_merged m.pt`` becomes ``m_beta0.1.pt``, and a file that a
    recorded run saved may be replaced."""
    run_options = options
    if options.save_merged and several:
        path = Path(options.save_merged)
        run_options = options.replace(save_merged=str(path.with_name(f"{path.stem}_beta{beta:g}{path.suffix}")))
    if run_options.save_merged in saved:
        run_options = run_options.replace(overwrite=True)
    return spec.replace(beta=beta), run_options


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
            try:
                betas.append(float(value))
            except ValueError:
                raise IFMError(f"--betas takes numbers, 'paper' or 'official'; got {value!r}") from None
    outside = [b for b in betas if not 0.0 < b < 1.0]
    if outside:
        raise IFMError(f"--betas must lie in (0, 1); got {outside[0]:g}")
    return sorted(set(betas))
