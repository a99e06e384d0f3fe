"""The GPU evidence command at smoke scale on the CPU: four runs trained together, sweeps and diagnoses in order of
importance within a time budget, resumed by a second call, packed into one archive without checkpoints."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ifm.experiments.evidence import RUNS, run_evidence

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_evidence_command_at_smoke_scale(cifar_root, tmp_path):
    out, archive = tmp_path / "evidence", tmp_path / "back" / "evidence.tar.gz"
    runs = (RUNS[0], RUNS[2], RUNS[3])  # VGG16 seed 0, flip only, ResNet18 (seed 1 differs from seed 0 in its seed)
    first = run_evidence("smoke", str(cifar_root), out, device="cpu", precision="fp32", minutes=0.0, runs=runs,
                         log=lambda line: None)
    assert first["done"] == [] and len(first["left_out_by_the_time_budget"]) == 3 + 3 + 2 + 3  # nothing fitted
    assert all((out / r.name / "checkpoints" / r.model / "params" / "model_epoch1.pt").exists() for r in runs)
    lines = []
    second = run_evidence("smoke", str(cifar_root), out, device="cpu", precision="fp32", minutes=30.0, runs=runs,
                          archive=archive, log=lines.append)
    assert not any(line.startswith("train") and "skipped" not in line for line in lines)  # trained once only
    assert second["left_out_by_the_time_budget"] == []
    assert second["done"][0]["step"] == "vgg16_s0: sweep the final epoch"
    runs = second["runs"]
    assert set(runs) == {"vgg16_s0", "vgg16_flip_s0", "resnet18_s0"} and [r.name for r in RUNS] == [
        "vgg16_s0", "vgg16_s1", "vgg16_flip_s0", "resnet18_s0"] and RUNS[1].seed == 1
    assert list(runs["vgg16_flip_s0"]["augment"]) == ["flip"] and runs["vgg16_s0"]["seed"] == 0
    assert list(runs["vgg16_s0"]["last_layer_min_distance"]) == [1, 2]
    sweeps = (out / "vgg16_s0" / "epochs" / "sweeps.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in sweeps[1:]] == [["1", "official"], ["2", "official"]]
    resnet = (out / "resnet18_s0" / "epochs" / "sweeps.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in resnet[1:]] == ["2"]  # ResNet18: the final epoch only
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "evidence/evidence.md" in names and "evidence/vgg16_s0/epochs/epochs.png" in names
    assert not any(name.endswith(".pt") for name in names)
    assert json.loads((out / "evidence.json").read_text())["profile"] == "smoke"


@pytest.mark.slow
def test_the_evidence_script_refuses_bad_input_in_one_line(cifar_root, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_evidence.py"), "--data_root",
                           str(tmp_path / "absent"), "--out", str(tmp_path / "o"), "--profile", "smoke", "--device",
                           "cpu"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr
