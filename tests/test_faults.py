"""Faults and bad input, as a new user meets them: each case runs the real command (its script as ``__main__``)
and must end with exit code 2 and exactly one ``error:`` line naming the problem (no traceback), leaving every file
it was given byte-equal and writing none. A few cases run in a fresh process, as a user's shell runs them
(:data:`IN_A_PROCESS`); the others run the script in this process (the same code, without the 3-6 s of starting
Python and importing torch). One representative case per category found by the review; the in-process tests check
the details (which records, which widths)."""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
VGG = str(ROOT / "vgg_cifar10_self_merge.py")
RESNET = str(ROOT / "resnet_cifar10_self_merge.py")
VGG_IMAGENET = str(ROOT / "vgg_imagenet_self_merge.py")
RESNET_IMAGENET = str(ROOT / "resnet_imagenet_self_merge.py")
SWEEP = str(ROOT / "scripts" / "sweep.py")
REPRODUCE = str(ROOT / "scripts" / "reproduce.py")
COMPARE = str(ROOT / "scripts" / "compare_methods.py")
REPRODUCE_CIFAR10 = str(ROOT / "scripts" / "reproduce_cifar10.py")
ANY = str(ROOT / "scripts" / "self_merge.py")
TRAIN = str(ROOT / "train_model.py")
VGG11_CFG = str(ROOT / "cfg" / "vgg11_training.yml")

pytestmark = pytest.mark.slow


@dataclass
class Work:
    """A case's folder (its current directory) holding ``vgg.pt`` (a tiny VGG11), ``resnet.pt`` and ``cifar/``."""
    dir: Path
    inputs: dict = field(default_factory=dict)

    def state(self, name: str = "vgg.pt") -> dict:
        return torch.load(self.dir / name, weights_only=True)["net"]

    def save(self, state: dict, name: str) -> str:
        torch.save(state, self.dir / name)
        return name


def _vgg(*extra: str) -> list[str]:
    return [VGG, "--vgg_name", "VGG11", "--model_param", "vgg.pt", "--no_progress", "--results", "r.jsonl", *extra]


def _eval(*extra: str) -> list[str]:
    return _vgg("--data_root", "cifar", "--eval_samples", "8", "--workers", "0", *extra)


def _inf_weight(w: Work) -> list[str]:
    sd = w.state()
    next(v for v in sd.values() if v.ndim == 4)[0, 0, 0, 0] = float("inf")
    return _vgg("--no_eval", "--model_param", w.save(sd, "inf.pt"))


def _no_matrix(w: Work) -> list[str]:
    return _vgg("--no_eval", "--model_param", w.save({k: v for k, v in w.state().items() if v.ndim != 2}, "x.pt"))


def _corrupt_image(w: Work) -> list[str]:
    (w.dir / "cifar" / "test" / "class03" / "zz.png").write_bytes(b"not an image")
    return _eval()


def _eleventh_class(w: Work) -> list[str]:
    shutil.copytree(w.dir / "cifar" / "test" / "class00", w.dir / "cifar" / "test" / "class10")
    return _eval()


def _garbage_batches(w: Work) -> list[str]:
    batches = w.dir / "batches" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"\x80garbage")
    return _vgg("--data_root", "batches", "--eval_samples", "8")


def _non_utf8_yaml(w: Work) -> list[str]:
    (w.dir / "bad.yml").write_bytes(b"model:\n  name: VGG11 \xff\xfe\n")
    return [TRAIN, "--cfg", "bad.yml", "--data_root", "cifar"]


def _unwritable_results(w: Work) -> list[str]:
    return _vgg("--no_eval", "--results", "vgg.pt/r.jsonl")  # a file where the folder should be


def _numpy_file(w: Work) -> list[str]:
    import numpy as np
    np.save(w.dir / "x.npy", np.zeros(3))
    return _vgg("--no_eval", "--model_param", "x.npy")


def _pickled_objects(w: Work) -> list[str]:
    import numpy as np
    torch.save({"features.0.weight": np.zeros(3)}, w.dir / "objects.pt")  # a NumPy array, not a tensor
    return _vgg("--no_eval", "--model_param", "objects.pt")


def _cache_is_a_folder(w: Work) -> list[str]:
    (w.dir / "out" / "baseline_cache.jsonl").mkdir(parents=True)
    return _eval("--results", "out/r.jsonl")


def _torn_results(w: Work) -> list[str]:
    (w.dir / "r.jsonl").write_text('[1, 2]\n"x"\n{"beta": 0.3, "acc')  # not objects, then a torn line
    return [SWEEP, "--vgg_name", "VGG11", "--model_param", "vgg.pt", "--no_eval", "--no_progress", "--results",
            "r.jsonl", "--betas", "0.3"]


#: case -> (builds the files and returns the command line, words the one error line must hold)
CASES: dict[str, tuple[Callable[[Work], list[str]], str]] = {
    # checkpoints
    "missing checkpoint": (lambda w: _vgg("--no_eval", "--model_param", "nope.pt"), "checkpoint not found"),
    "0-byte checkpoint": (lambda w: (w.dir / "e.pt").touch() or _vgg("--no_eval", "--model_param", "e.pt"),
                          "the file is empty"),
    "a NumPy file as checkpoint": (_numpy_file, "cannot read checkpoint x.npy: it is not a file written by torch.save"),
    "pickled objects as checkpoint": (_pickled_objects, "cannot read checkpoint objects.pt: it holds pickled Python"),
    "text bytes as checkpoint": (lambda w: (w.dir / "t.pt").write_bytes(b"not a checkpoint")
                                 and _vgg("--no_eval", "--model_param", "t.pt"),
                                 "cannot read checkpoint t.pt: it is not a file written by torch.save"),
    "a folder as --model_param": (lambda w: _vgg("--no_eval", "--model_param", "cifar"), "checkpoint cifar is a folder"),
    "a failed run in a new results folder": (lambda w: _vgg("--no_eval", "--model_param", "nope.pt", "--results",
                                                            "new/r.jsonl"), "checkpoint not found"),
    "inf weight": (_inf_weight, "non-finite"),
    "state dict without its classifier": (_no_matrix, "missing ['classifier"),
    "VGG11 weights as VGG16": (lambda w: _vgg("--no_eval", "--vgg_name", "VGG16"), "do not fit VGG16"),
    "CIFAR weights to the ImageNet script": (lambda w: [VGG_IMAGENET, "--arch", "vgg11", "--model_param", "vgg.pt",
                                                        "--no_eval", "--results", "r.jsonl"], "do not fit vgg11"),
    "VGG weights to the ResNet script": (lambda w: [RESNET, "--model_param", "vgg.pt", "--no_eval", "--results",
                                                    "r.jsonl"], "do not fit ResNet18"),
    # arguments
    "beta outside (0, 1)": (lambda w: _vgg("--no_eval", "--threshold", "1.5"), "beta"),
    "max_ratio 0": (lambda w: _vgg("--no_eval", "--max_ratio", "0"), "max_ratio"),
    "--device tpu": (lambda w: _vgg("--no_eval", "--device", "tpu"), "--device"),
    "--stages 7": (lambda w: [RESNET, "--model_param", "resnet.pt", "--stages", "7", "--no_eval", "--results",
                              "r.jsonl"], "stages"),
    "--workers -1": (lambda w: _eval("--workers", "-1"), "--workers"),
    "--batch_size 0": (lambda w: _eval("--batch_size", "0"), "--batch_size"),
    "sweep --betas 0.1 1.5": (lambda w: [SWEEP, "--model_param", "vgg.pt", "--vgg_name", "VGG11", "--betas", "0.1",
                                         "1.5", "--no_eval"], "--betas must lie in (0, 1); got 1.5"),
    "--eval_samples beyond the test set": (lambda w: _eval("--eval_samples", "20000"),
                                           "--eval_samples 20000 exceeds the 40 test images"),
    "--betas abc": (lambda w: [SWEEP, "--model_param", "vgg.pt", "--vgg_name", "VGG11", "--betas", "abc",
                               "--no_eval"], "--betas"),
    "fig2a --layers x": (lambda w: [REPRODUCE, "fig2a", "--arch", "VGG11", "--model_param", "vgg.pt", "--layers",
                                    "x", "--out", "out"], "--layers"),
    "compare_methods --seeds 0": (lambda w: [COMPARE, "--vgg_name", "VGG11", "--model_param", "vgg.pt", "--seeds",
                                             "0", "--data_root", "cifar", "--no_progress", "--results", "c.jsonl"],
                                  "--seeds"),
    "any-CNN --arch that does not import": (lambda w: [ANY, "--arch", "nowhere.nets:build", "--model_param", "vgg.pt",
                                                      "--no_eval"], "cannot import nowhere.nets:build"),
    "any-CNN --input_size 3 0 5": (lambda w: [ANY, "--arch", "VGG11", "--model_param", "vgg.pt", "--input_size", "3",
                                              "0", "5", "--no_eval"], "--input_size takes C H W"),
    # data
    "missing data root": (lambda w: _vgg("--data_root", "nowhere"), "no CIFAR-10 found"),
    "undecodable image": (_corrupt_image, "cannot decode image"),
    "an 11th class folder": (_eleventh_class, "class folders"),
    "garbage cifar-10-batches-py": (_garbage_batches, "cannot read CIFAR-10"),
    # training configs
    "YAML that is not UTF-8": (_non_utf8_yaml, "UTF-8"),
    "--set of the wrong shape": (lambda w: [TRAIN, "--cfg", VGG11_CFG, "--set", "train.milestones=5"], "a list"),
    "model.name VGG99": (lambda w: [TRAIN, "--cfg", VGG11_CFG, "--set", "model.name=VGG99"], "VGG99"),
    "lr < 0": (lambda w: [TRAIN, "--cfg", VGG11_CFG, "--set", "train.lr=-0.1"], "train.lr"),
    "--resume without a run": (lambda w: [TRAIN, "--cfg", VGG11_CFG, "--resume", "--set", "output_dir=runs"],
                               "nothing to resume"),
    # files that must not be touched, work that must not be thrown away
    "--results is the checkpoint": (lambda w: _vgg("--no_eval", "--results", "vgg.pt"), "is the checkpoint"),
    "--save_merged exists": (lambda w: _vgg("--no_eval", "--save_merged", "resnet.pt"), "exists"),
    "--save_merged is the checkpoint": (lambda w: _vgg("--no_eval", "--save_merged", "vgg.pt", "--overwrite"),
                                        "is the input checkpoint"),
    "results folder cannot be made": (_unwritable_results, "vgg.pt is a file, not a folder"),
    "the accuracy cache beside --results cannot be written": (_cache_is_a_folder, "the accuracy cache beside --results"),
    "fig3a --out under a file": (lambda w: [REPRODUCE, "fig3a", "--results", "r.jsonl", "--out", "vgg.pt/figures"],
                                 "--out vgg.pt/figures: vgg.pt is a file"),
    "fig2a --out under a file": (lambda w: [REPRODUCE, "fig2a", "--arch", "VGG11", "--model_param", "vgg.pt",
                                            "--out", "vgg.pt/figures"], "--out vgg.pt/figures: vgg.pt is a file"),
    "reproduce_cifar10 --out is a file": (lambda w: [REPRODUCE_CIFAR10, "--data_root", "cifar", "--profile", "smoke",
                                                     "--out", "vgg.pt"], "--out vgg.pt is a file"),
    # paths no folder can be made in, whatever the permission bits say (root): refused before any work
    "--results under /proc": (lambda w: _vgg("--no_eval", "--results", "/proc/ifm/r.jsonl"),
                              "--results /proc/ifm/r.jsonl cannot be written"),
    "--save_merged under /proc": (lambda w: _vgg("--no_eval", "--save_merged", "/proc/ifm/m.pt"),
                                  "--save_merged /proc/ifm/m.pt cannot be written"),
    "reproduce_cifar10 --out under /proc": (lambda w: [REPRODUCE_CIFAR10, "--data_root", "cifar", "--profile", "smoke",
                                                       "--out", "/proc/ifm"], "--out /proc/ifm cannot be written"),
    "compare_methods --distill_budgets without --distill": (
        lambda w: [COMPARE, "--vgg_name", "VGG11", "--model_param", "vgg.pt", "--data_root", "cifar", "--no_progress",
                   "--results", "c.jsonl", "--distill_budgets", "25"], "--distill_budgets needs --distill STEPS"),
    "compare_methods --distill_budgets outside --budgets": (
        lambda w: [COMPARE, "--vgg_name", "VGG11", "--model_param", "vgg.pt", "--data_root", "cifar", "--no_progress",
                   "--results", "c.jsonl", "--budgets", "50", "--distill", "5", "--synthetic", "8",
                   "--distill_budgets", "25"], "--distill_budgets must be among --budgets"),
    "compare_methods --out under /proc": (lambda w: [COMPARE, "--vgg_name", "VGG11", "--model_param", "vgg.pt",
                                                     "--data_root", "cifar", "--no_progress", "--results", "c.jsonl",
                                                     "--out", "/proc/ifm"], "--out /proc/ifm/frontier.csv cannot"),
}


@pytest.fixture
def work(tmp_path, tiny_checkpoints, cifar_root) -> Work:
    shutil.copy(tiny_checkpoints["VGG11"], tmp_path / "vgg.pt")
    shutil.copy(tiny_checkpoints["ResNet18"], tmp_path / "resnet.pt")
    shutil.copytree(cifar_root, tmp_path / "cifar")
    return Work(tmp_path)


def _files(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IFM_CACHE": str(cwd.parent / f"{cwd.name}_cache")}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


#: the cases that run in a fresh Python process (one per kind of entry point)
IN_A_PROCESS = {"missing checkpoint", "beta outside (0, 1)", "missing data root", "--results under /proc",
                "lr < 0", "reproduce_cifar10 --out is a file", "fig2a --layers x", "sweep --betas 0.1 1.5"}
assert IN_A_PROCESS <= set(CASES), IN_A_PROCESS - set(CASES)


def _run_here(argv: list[str], cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """The script ``argv[0]`` run as ``__main__`` in this process, in ``cwd``: its exit code, stdout and stderr."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("IFM_CACHE", str(cwd.parent / f"{cwd.name}_cache"))
    monkeypatch.setattr(sys, "argv", list(argv))
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_in_one_error_line_and_touches_nothing(case, work, monkeypatch):
    build, words = CASES[case]
    argv = build(work)
    before = _files(work.dir)
    proc = _run(argv, work.dir) if case in IN_A_PROCESS else _run_here(argv, work.dir, monkeypatch)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert words in lines[0]
    assert _files(work.dir) == before  # nothing modified, nothing written, no folder made


def test_unreadable_results_lines_are_reported_and_the_run_goes_on(work):
    argv = _torn_results(work)
    proc = _run(argv, work.dir)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["warning: r.jsonl: skipped 3 line(s) that are no JSON record (line 1, 2, 3; "
                     "a write interrupted by a crash?)"]
    text = (work.dir / "r.jsonl").read_text()
    assert text.startswith('[1, 2]\n"x"\n{"beta": 0.3, "acc\n{')  # old lines kept, the record on a fresh line


def test_a_terminated_atomic_write_leaves_no_temporary_file(tmp_path):
    """SIGTERM (a cluster's time limit, ``kill``) during an atomic write: the temporary file is removed, the target
    is never created half-written."""
    code = ("import sys, time; from ifm.experiments.cli import cli_main; from ifm.experiments.io import atomic_write\n"
            "def write(tmp):\n"
            "    open(tmp, 'wb').write(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n"
            "sys.exit(cli_main(lambda: atomic_write('out.pt', write)))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_imagenet_val_that_does_not_fit_the_classifier(tmp_path):
    """A partial ImageNet val/ for a 1000-class ResNet: 3 class folders, then one of them empty."""
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    val = make_image_folder(tmp_path / "imagenet", {"val": 1}, size=64, classes=3) / "val"
    argv = [RESNET_IMAGENET, "--arch", "resnet18", "--model_param", "r18.pt", "--data_root", "imagenet",
            "--results", "r.jsonl", "--workers", "0", "--no_progress"]
    for words in ["3 classes but the checkpoint's classifier has 1000 outputs", "no usable ImageNet validation set"]:
        proc = _run(argv, tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
        shutil.rmtree(val / "class02")
        (val / "class02").mkdir()  # an empty class folder
    assert not (tmp_path / "r.jsonl").exists()
