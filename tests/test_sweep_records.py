"""Sweep records: what identifies a run (checkpoint content, data, seeds), shards, and appends that several
processes make at once or that follow a torn line."""
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch

from ifm.errors import IFMError, IFMWarning
from ifm.experiments.io import append_jsonl, read_jsonl
from ifm.experiments.sweep import PAPER_BETAS, shard_of

from tests.helpers import script

sweep_script = script("sweep")


def test_shards_split_a_grid_without_overlap():
    betas = list(PAPER_BETAS)
    shards = [shard_of(betas, f"{k}/3") for k in (1, 2, 3)]
    assert shards[0] == [0.01, 0.07, 0.14, 0.2] and shards[1] == [0.03, 0.1, 0.15]
    assert sorted(b for s in shards for b in s) == sorted(betas)
    assert shard_of(betas, None) == betas
    for bad in ("0/3", "4/3", "x", "1/"):
        with pytest.raises(IFMError, match="--shard"):
            shard_of(betas, bad)


def _sweep(ckpt, data_root, results, *extra) -> list[str]:
    return ["--vgg_name", "VGG11", "--model_param", str(ckpt), "--data_root", str(data_root), "--results",
            str(results), "--no_progress", "--eval_samples", "8", *extra]


@pytest.mark.slow
def test_two_shards_fill_one_results_file(tiny_checkpoints, cifar_root, tmp_path):
    results = tmp_path / "r.jsonl"
    for k in (1, 2):
        assert sweep_script.main(_sweep(tiny_checkpoints["VGG11"], cifar_root, results, "--betas", "0.2", "0.3",
                                        "0.4", "--shard", f"{k}/2")) == 0
    assert sorted(r["beta"] for r in read_jsonl(results)) == [0.2, 0.3, 0.4]


@pytest.mark.slow
def test_a_checkpoint_replaced_at_the_same_path_is_merged_again(tiny_checkpoints, cifar_root, tmp_path, capsys):
    ckpt, results = tmp_path / "model.pt", tmp_path / "r.jsonl"
    shutil.copy(tiny_checkpoints["VGG11"], ckpt)
    argv = _sweep(ckpt, cifar_root, results, "--betas", "0.3")
    assert sweep_script.main(argv) == 0
    first = list(read_jsonl(results))[-1]
    state = torch.load(ckpt, weights_only=True)["net"]
    for key, value in state.items():  # different weights: every conv's channels become identical
        if value.ndim == 4:
            value.copy_(value[:1].expand_as(value))
    torch.save(state, ckpt)
    assert sweep_script.main(argv) == 0
    assert "already in" not in capsys.readouterr().out
    second = list(read_jsonl(results))[-1]
    assert second["checkpoint_digest"] != first["checkpoint_digest"] and second["n_merges"] > first["n_merges"]


@pytest.mark.slow
def test_other_data_or_seeds_are_not_taken_for_a_done_run(tiny_checkpoints, cifar_root, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    other = tmp_path / "copy"
    shutil.copytree(cifar_root, other)
    base = _sweep(tiny_checkpoints["VGG11"], cifar_root, results, "--betas", "0.3", "--baseline", "random")
    assert sweep_script.main(base + ["--seeds", "2"]) == 0
    assert sweep_script.main(base + ["--seeds", "3"]) == 0
    moved = _sweep(tiny_checkpoints["VGG11"], other, results, "--betas", "0.3", "--baseline", "random", "--seeds", "3")
    assert sweep_script.main(moved) == 0
    assert "already in" not in capsys.readouterr().out
    records = list(read_jsonl(results))
    assert [r["seeds"] for r in records] == [2, 3, 3] and len(records[1]["acc_after_runs"]) == 3
    assert sweep_script.main(moved) == 0
    assert "already in" in capsys.readouterr().out and len(list(read_jsonl(results))) == 3


def _append_many(path: str, writer: int, count: int) -> None:
    for k in range(count):
        append_jsonl(path, {"writer": writer, "k": k, "pad": "x" * (100 + 997 * writer * (k % 3))}, sync=False)


@pytest.mark.slow
def test_concurrent_appends_from_several_processes_never_interleave(tmp_path):
    path = str(tmp_path / "r.jsonl")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(path, w, 500)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 2000
    records = [json.loads(line) for line in lines]  # every line is one whole record
    assert sorted((r["writer"], r["k"]) for r in records) == [(w, k) for w in range(4) for k in range(500)]


def test_a_record_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, {"beta": 0.1})
    with open(path, "a") as handle:
        handle.write('{"beta": 0.2, "acc')  # a writer killed mid-line
    append_jsonl(path, {"beta": 0.3})
    with pytest.warns(IFMWarning, match="skipped 1 line.*line 2"):  # the torn line is reported
        assert [r["beta"] for r in read_jsonl(path)] == [0.1, 0.3]
    assert path.read_text().endswith('{"beta": 0.3}\n')


@pytest.mark.slow
def test_a_sweep_saves_one_merged_model_per_beta_and_resumes(tiny_checkpoints, cifar_root, tmp_path):
    results, merged = tmp_path / "r.jsonl", tmp_path / "m.pt"
    argv = _sweep(tiny_checkpoints["VGG11"], cifar_root, results, "--betas", "0.3", "0.6", "--save_merged", str(merged))
    assert sweep_script.main(argv) == 0
    records = list(read_jsonl(results))
    assert [r["saved_to"] for r in records] == [str(tmp_path / "m_beta0.3.pt"), str(tmp_path / "m_beta0.6.pt")]
    widths = [torch.load(r["saved_to"], weights_only=True)["features.0.weight"].shape[0] for r in records]
    assert widths == [r["widths"]["perm_features.0"] for r in records]
    assert sweep_script.main(argv) == 0  # done β values: skipped, their files are not "in the way"
    assert len(list(read_jsonl(results))) == 2


@pytest.mark.parametrize("target", ["checkpoint", "folder"])
def test_results_that_would_overwrite_an_input_are_refused_before_any_work(tiny_checkpoints, cifar_root, tmp_path,
                                                                            target, capsys):
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoints["VGG11"], ckpt)
    before = ckpt.read_bytes()
    results = ckpt if target == "checkpoint" else tmp_path
    assert sweep_script.main(_sweep(ckpt, cifar_root, results, "--betas", "0.3")) == 2
    assert ckpt.read_bytes() == before
    assert ("is the checkpoint" if target == "checkpoint" else "is a folder") in capsys.readouterr().err


def test_records_never_hold_bare_nan_and_written_files_keep_the_usual_mode(tmp_path):
    import os
    from ifm.experiments.io import write_json
    append_jsonl(tmp_path / "r.jsonl", {"beta": 0.1, "acc_after": float("nan"), "x": [float("inf"), 1.0]})
    line = (tmp_path / "r.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"beta": 0.1, "acc_after": None, "x": [None, 1.0]}
    mask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "s.json", {"a": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def _slow_sweep(spec, options, betas) -> None:
    """A sweep whose runs take a second longer (another user's sweep on the same results file)."""
    import time
    import ifm.experiments.sweep as sweep_module
    run = sweep_module.run_self_merge
    sweep_module.run_self_merge = lambda *a, **k: (time.sleep(1.5), run(*a, **k))[1]
    sweep_module.sweep(spec, options, betas, log=lambda line: None)


@pytest.mark.slow
def test_two_concurrent_sweeps_compute_each_beta_once(tiny_checkpoints, cifar_root, tmp_path):
    from ifm.experiments.run import RunOptions, RunSpec
    from ifm.experiments.loading import load_model
    from ifm.experiments.selfmerge import run_identity
    from ifm.experiments.sweep import run_claim, run_key, sweep
    spec = RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"]), data_root=str(cifar_root), eval_samples=8)
    options = RunOptions(results=str(tmp_path / "r.jsonl"), progress=False, workers=0)
    other = multiprocessing.get_context("spawn").Process(target=_slow_sweep, args=(spec, options, [0.3]))
    other.start()
    key = run_key({**run_identity(spec.replace(beta=0.3), load_model(spec), None), "eval_samples": 8})
    deadline = time.monotonic() + 180  # (a spawned process imports torch first: slow on a loaded machine)
    while time.monotonic() < deadline:  # until the other sweep holds β 0.3
        with run_claim(options.results, key, 0.3, wait=False) as free:
            if not free:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the other sweep never claimed beta 0.3")
    log = []
    records = sweep(spec, options, [0.3, 0.6], log=log.append)
    other.join(60)
    assert other.exitcode == 0
    assert "0.3: being computed by another process" in log[1] and "already in" in log[2]
    assert sorted(r["beta"] for r in read_jsonl(options.results)) == [0.3, 0.6]  # β 0.3 recorded once
    assert [r["beta"] for r in records] == [0.3, 0.6]


@pytest.mark.slow
def test_the_run_description_is_the_records_identity(tiny_checkpoints, cifar_root, tmp_path):
    """The sweep's skip key is built from the RunSpec before the run; it must equal the key of the record the run
    writes, for every kind of setting (else a sweep never skips, or skips the wrong run)."""
    from ifm.experiments.run import RunOptions, RunSpec, from_args
    from ifm.experiments.evaluate import Evaluator
    from ifm.experiments.loading import load_model
    from ifm.experiments.arguments import merge_argument_parser
    from ifm.experiments.selfmerge import run_identity, run_self_merge
    from ifm.experiments.sweep import SAME_RUN_FIELDS, run_key
    args = merge_argument_parser("cifar10", "resnet").parse_args(
        ["--resnet_name", "ResNet18", "--model_param", str(tiny_checkpoints["ResNet18"]), "--threshold", "0.4",
         "--stages", "3", "4", "--baseline", "random", "--seeds", "2", "--no_eval", "--results", "x.jsonl"])
    spec, options = from_args(args)
    assert spec == RunSpec(arch="ResNet18", beta=0.4, model_param=str(tiny_checkpoints["ResNet18"]), stages=(3, 4),
                           method="random", seeds=2, data_root=None)
    assert options.results == "x.jsonl" and not options.overwrite
    with pytest.raises(AttributeError):
        spec.beta = 0.5  # frozen
    results = str(tmp_path / "r.jsonl")
    for spec in (RunSpec(arch="VGG11", beta=0.3, model_param=str(tiny_checkpoints["VGG11"]), bn_mode="fold",
                         data_root=str(cifar_root), eval_samples=8, max_ratio=0.5, dtype="float32"),
                 RunSpec(arch="ResNet18", beta=0.3, model_param=str(tiny_checkpoints["ResNet18"]), stages=[2, 4],
                         method="random", seeds=2, data_root=str(cifar_root), order="layerwise"),
                 RunSpec(arch="VGG11", beta=0.3, model_param=str(tiny_checkpoints["VGG11"]), method="l1")):
        options = RunOptions(results=results, progress=False, workers=0)
        loaded = load_model(spec)
        evaluator = Evaluator(loaded, spec, options, torch.device("cpu")) if spec.evaluates else None
        record = run_self_merge(spec, options, loaded, evaluator)
        assert run_key(record) == run_key(run_identity(spec, loaded, evaluator))
        assert set(SAME_RUN_FIELDS) == set(run_identity(spec, loaded, evaluator)) - {"beta"}  # every field counts
        assert {k: record[k] for k in spec.record_fields()} == json.loads(json.dumps(spec.record_fields()))


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_keeps_the_records_leaves_no_claims_file_and_is_one_line(tiny_checkpoints, tmp_path,
                                                                                     monkeypatch, capsys):
    from ifm.experiments import sweep as sweeping
    from ifm.experiments.cli import cli_main
    from ifm.experiments.run import RunOptions, RunSpec
    real = sweeping.run_self_merge

    def interrupted_at_02(spec, *args, **kwargs):
        if spec.beta == 0.2:
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)
    monkeypatch.setattr(sweeping, "run_self_merge", interrupted_at_02)
    results = tmp_path / "r.jsonl"
    spec = RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"]))
    with pytest.raises(KeyboardInterrupt):
        sweeping.sweep(spec, RunOptions(results=str(results), progress=False), [0.1, 0.2, 0.3], log=lambda line: None)
    assert len(list(read_jsonl(results))) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]
    code = cli_main(lambda: sweeping.sweep(spec, RunOptions(results=str(results), progress=False), [0.1, 0.2],
                                           log=lambda line: None), lambda: "1 record kept; run again to resume")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err == ["interrupted; 1 record kept; run again to resume"]


def test_a_null_field_of_an_older_record_counts_as_its_default():
    from ifm.experiments.run import RunSpec
    from ifm.experiments.sweep import run_key
    new = {"model": "VGG11", "checkpoint": "c", "checkpoint_digest": "d", "eval_samples": 10,
           **RunSpec(arch="VGG11").record_fields()}
    assert run_key({**new, "synthetic_bn": None}) == run_key(new) == run_key({k: v for k, v in new.items()
                                                                             if k != "synthetic_bn"})
    assert run_key({**new, "synthetic_bn": 64}) != run_key(new)


def test_a_distilled_record_from_before_distill_mix_is_the_unmixed_run():
    from ifm.experiments.run import RunSpec
    from ifm.experiments.sweep import run_key
    head = {"model": "VGG11", "checkpoint": "c", "checkpoint_digest": "d", "eval_samples": 10}
    unmixed = RunSpec(arch="VGG11", synthetic_bn=64, distill=500, distill_mix="none")
    older = {**head, **unmixed.record_fields()}
    del older["distill_mix"]
    assert unmixed.record_fields()["distill_mix"] is None  # as before the option: old frontiers resume
    assert run_key(older) == run_key({**head, **unmixed.record_fields()})
    default = {**head, **unmixed.replace(distill_mix=RunSpec.distill_mix).record_fields()}
    assert default["distill_mix"] == "cutmix" and run_key(default) != run_key(older)  # the default mixes
    assert RunSpec(arch="VGG11").record_fields()["distill_mix"] is None  # no distillation, nothing to mix
