"""The four self-merge entry scripts, end to end on tiny generated data and checkpoints."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ifm import model_for_state_dict
from ifm.experiments.io import read_jsonl
from ifm.experiments.arguments import cli

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["model", "dataset", "checkpoint", "beta", "max_ratio", "order", "widths", "n_merges", "params_before",
          "params_after", "flops_before", "flops_after", "acc_before", "acc_after", "loss_before", "loss_after",
          "eval_samples", "merge_seconds", "device", "torch_version", "time"]


@pytest.mark.slow
def test_vgg_cifar10_end_to_end(tiny_checkpoints, cifar_root, tmp_path, capsys):
    results, merged = tmp_path / "res.jsonl", tmp_path / "merged.pt"
    argv = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--data_root", str(cifar_root),
            "--threshold", "0.6", "--results", str(results), "--save_merged", str(merged), "--device", "cpu",
            "--no_progress"]
    assert cli("cifar10", "vgg", argv) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "widths:" in out
    (record,) = list(read_jsonl(results))
    assert all(f in record for f in FIELDS)
    assert record["eval_samples"] == 40 and record["n_merges"] > 0
    assert record["params_after"] < record["params_before"]
    sd = torch.load(merged, weights_only=True)
    assert model_for_state_dict("VGG11", sd)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert [sd[f"features.{i}.weight"].shape[0] for i in (0, 4)] == list(record["widths"].values())[:2]
    # a second run appends, reuses the cached original accuracy, and never overwrites the checkpoint
    argv2 = [a if a != "0.6" else "0.7" for a in argv if a not in ("--save_merged", str(merged))]
    assert cli("cifar10", "vgg", argv2 + ["--eval_samples", "20"]) == 0
    assert cli("cifar10", "vgg", argv) == 2
    assert "exists" in capsys.readouterr().err
    records = list(read_jsonl(results))
    assert len(records) == 2 and records[1]["eval_samples"] == 20
    cache = list(read_jsonl(tmp_path / "baseline_cache.jsonl"))
    assert len(cache) == 2  # one per (checkpoint, eval subset)


@pytest.mark.slow
def test_resnet_cifar10_merges_only_stages_3_4_by_default(tiny_checkpoints, cifar_root, tmp_path):
    results = tmp_path / "res.jsonl"
    base = ["--resnet_name", "ResNet18", "--model_param", str(tiny_checkpoints["ResNet18"]), "--data_root",
            str(cifar_root), "--threshold", "0.7", "--results", str(results), "--no_progress", "--eval_samples", "10"]
    assert cli("cifar10", "resnet", base) == 0
    assert cli("cifar10", "resnet", base + ["--stages", "2", "3", "4", "--order", "layerwise"]) == 0
    first, second = read_jsonl(results)
    assert list(first["widths"])[0] == "layer3.0.relu1"
    assert list(second["widths"])[0] == "layer2.0.relu1" and second["order"] == "layerwise"


def _torchvision_checkpoint(tmp_path, arch):
    import torchvision
    path = tmp_path / f"{arch}.pth"
    torch.save(getattr(torchvision.models, arch)(weights=None, num_classes=10).state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family,arch", [("resnet", "resnet18")])  # (vgg11_bn: 129M parameters, a minute; the VGG
def test_imagenet_scripts(family, arch, imagenet_root, tmp_path):  # ImageNet script's own paths are in test_faults)
    ckpt, results, merged = _torchvision_checkpoint(tmp_path, arch), tmp_path / "r.jsonl", tmp_path / "m.pt"
    argv = ["--arch", arch, "--model_param", str(ckpt), "--threshold", "0.05", "--results", str(results),
            "--no_progress", "--workers", "0", "--batch_size", "8"]
    if family == "vgg":
        argv += ["--no_eval", "--save_merged", str(merged), "--max_ratio", "0.01"]
    else:
        argv += ["--data_root", str(imagenet_root), "--eval_samples", "6"]
    assert cli("imagenet", family, argv) == 0
    (record,) = list(read_jsonl(results))
    assert record["dataset"] == "imagenet"
    if family == "vgg":
        assert record["acc_after"] is None
        model_for_state_dict(arch, torch.load(merged, weights_only=True))
    else:
        assert record["eval_samples"] == 6 and 0 <= record["acc_after"] <= 100


def _run_script(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--model_param", "missing.pt"], "checkpoint not found"),
    (["--threshold", "1.5"], "beta"),
    (["--max_ratio", "0"], "max_ratio"),
    (["--vgg_name", "VGG16"], "do not fit VGG16"),
    (["--data_root", "/nonexistent/cifar"], "no CIFAR-10 found"),
])
def test_bad_input_is_one_clear_line(args, message, tiny_checkpoints, tmp_path):
    base = {"--model_param": str(tiny_checkpoints["VGG11"]), "--vgg_name": "VGG11", "--data_root": "/nonexistent/x",
            "--results": str(tmp_path / "r.jsonl")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = [x for kv in base.items() for x in kv]
    if message in ("checkpoint not found", "do not fit VGG16", "beta", "max_ratio"):
        argv.append("--no_eval")
    code, _, err = _run_script("vgg_cifar10_self_merge.py", *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "r.jsonl").exists()  # nothing written


@pytest.mark.slow
def test_unknown_imagenet_arch_and_missing_weights(tmp_path):
    code, _, err = _run_script("resnet_imagenet_self_merge.py", "--arch", "resnet99", "--no_eval")
    assert code == 2 and "unknown architecture" in err[-1]
    code, _, err = _run_script("vgg_imagenet_self_merge.py", "--no_eval")
    assert code == 2 and "--weights" in err[-1]


@pytest.mark.slow
def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = _run_script("vgg_cifar10_self_merge.py", "--model_param", str(bad), "--no_eval")
    assert code == 2 and "cannot read checkpoint" in err[-1]


@pytest.mark.parametrize("progress", [True, False])
def test_cifar_decoding_bar_follows_progress(cifar_root, capsys, progress):
    """The one-time decoding of an ImageFolder CIFAR tree shows a bar unless ``--no_progress``."""
    from ifm.experiments.data import load_cifar10
    data = load_cifar10(cifar_root, "test", progress=progress)
    assert len(data) == 40
    assert ("decoding test" in capsys.readouterr().err) == progress


HELP_COMMANDS = ([[p.name] for p in sorted(ROOT.glob("*.py"))] + [[f"scripts/{p.name}"] for p in
                 sorted((ROOT / "scripts").glob("*.py"))] + [["scripts/reproduce.py", c] for c in
                 ["fig3a", "fig3b", "fig5a", "fig2a", "fig2b", "table2", "guided"]])


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_prints_its_help(command, monkeypatch, capsys):
    import runpy
    monkeypatch.setattr(sys, "argv", [str(ROOT / command[0]), *command[1:], "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / command[0]), run_name="__main__")
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("script,args,message", [
    ("resnet_cifar10_self_merge.py", ["--resnet_name", "ResNet18", "--stages", "5"], "ResNet stages are 1, 2, 3 and 4"),
    ("vgg_cifar10_self_merge.py", ["--batch_size", "0"], "--batch_size must be positive"),
    ("vgg_cifar10_self_merge.py", ["--workers", "-1"], "--workers must be 0 or more"),
    ("vgg_cifar10_self_merge.py", ["--baseline", "random", "--seeds", "0"], "--seeds must be positive"),
    ("vgg_cifar10_self_merge.py", ["--device", "tpu"], "unknown --device 'tpu'"),
])
def test_more_bad_arguments_are_one_line_in_process(script, args, message, tiny_checkpoints, cifar_root, tmp_path,
                                                    capsys):
    """Called in process (cli), as the scripts do: exit code 2, one error line, nothing written."""
    family = "resnet" if script.startswith("resnet") else "vgg"
    ckpt = tiny_checkpoints["ResNet18" if family == "resnet" else "VGG11"]
    argv = ["--model_param", str(ckpt), "--data_root", str(cifar_root), "--results", str(tmp_path / "r.jsonl"),
            "--no_progress", *args]
    assert cli("cifar10", family, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "r.jsonl").exists()


def test_a_test_set_missing_a_class_folder_is_refused(cifar_root, tmp_path):
    import shutil
    from ifm.experiments.data import load_cifar10
    from ifm.errors import IFMError
    partial = tmp_path / "partial"
    shutil.copytree(cifar_root, partial)
    shutil.rmtree(partial / "test" / "class04")
    with pytest.raises(IFMError, match="has 9 class folders, CIFAR-10 has 10"):
        load_cifar10(partial, "test", progress=False)


def test_images_moved_between_class_folders_are_not_served_from_the_cache(cifar_root, tmp_path):
    import shutil
    from ifm.experiments.data import load_cifar10
    moved = tmp_path / "moved"
    shutil.copytree(cifar_root, moved)
    before = load_cifar10(moved, "test", progress=False)  # decoded and cached
    name = sorted((moved / "test" / "class00").iterdir())[1]  # not the first or last file of the tree
    shutil.move(str(name), moved / "test" / "class01" / ("x" + name.name))
    after = load_cifar10(moved, "test", progress=False)
    assert (after.labels == 0).sum() == (before.labels == 0).sum() - 1
    assert (after.labels == 1).sum() == (before.labels == 1).sum() + 1
    assert after.source != before.source
