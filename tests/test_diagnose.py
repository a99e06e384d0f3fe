"""``reproduce.py diagnose`` finds what was built into the weights: exact duplicates, dead BN channels, channels
never positive on data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from ifm import channel_groups
from ifm.experiments.diagnose import (batchnorm_mismatch, count_never_positive, diagnose_groups,
                                      self_distance_residues)
from ifm.experiments.io import read_jsonl
from ifm.experiments.planted import copy_channel
from tests.helpers import script

ROOT = Path(__file__).resolve().parents[1]


def _constructed() -> tuple[dict, list]:
    """A width-0.125 VGG11: 2 exact duplicate pairs in the first group, 3 dead channels (γ 0, β -1) in the
    third, whose BN is ``features.9``."""
    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    groups = channel_groups("VGG11", sd)
    copy_channel(sd, groups[0], 0, 5)
    copy_channel(sd, groups[0], 1, 6)
    bn = next(m.key for m in groups[2].members if m.key.endswith(".weight") and sd[m.key].ndim == 1)
    sd[bn][[2, 4, 7]] = 0.0
    sd[bn.replace("weight", "bias")][[2, 4, 7]] = -1.0
    return sd, groups


def test_duplicates_and_dead_channels_built_into_the_weights_are_found():
    sd, groups = _constructed()
    rows = {r.group: r for r in diagnose_groups(sd, groups)}
    first, third = rows[groups[0].name], rows[groups[2].name]
    assert first.duplicate_pairs == 2 and first.min_distance == 0.0
    assert third.dead_bn == 3 and third.bn_scale_min == 0.0
    others = [r for name, r in rows.items() if name not in (groups[0].name,)]
    assert all(r.duplicate_pairs == 0 and r.min_distance > 1e-3 for r in others)
    assert sum(r.dead_bn for r in rows.values()) == 3 and all(r.dead_relu is None for r in rows.values())
    # the median against a direct computation of Eq. 6 (rows and columns of the first group)
    w0, w1 = sd["features.0.weight"].double().flatten(1), sd["features.4.weight"].double().transpose(0, 1).flatten(1)
    v = torch.cat([w0, w1], 1)
    d = torch.cdist(v, v) ** 2
    off = d[~torch.eye(len(v), dtype=torch.bool)] / d.max()
    assert abs(first.median_distance - float(off.median())) < 1e-9


def test_channels_never_positive_on_data_are_counted():
    sd, groups = _constructed()
    model = models.create_model("VGG11", width=0.125)
    model.load_state_dict(sd)
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dead = count_never_positive(model, groups, [images[:32], images[32:]])
    model.eval()
    with torch.no_grad():  # directly: the BN outputs of every layer on all images at once
        for group, bn in zip(groups, [k for k, m in enumerate(model.features) if isinstance(m, torch.nn.BatchNorm2d)]):
            peak = model.features[:bn + 1](images).amax((0, 2, 3))
            assert dead[group.name] == int((peak <= 0).sum())
            if group is groups[2]:
                assert bool((peak[[2, 4, 7]] <= 0).all()) and dead[group.name] >= 3
    assert set(dead) == {g.name for g in groups}  # every VGG group has one producing conv


def test_batchnorm_mismatch_measures_stored_against_data_statistics():
    """Running statistics set to the data's own give ratio 1 and shift 0; a stored variance 4x too small gives ratio
    4; a stored mean one std off gives shift 1."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    batches = [torch.randn(8, 3, 6, 6) * 2 + 1 for _ in range(3)]
    with torch.no_grad():
        z = torch.cat([model[0](x) for x in batches]).transpose(0, 1).reshape(4, -1).double()
    mean, var = z.mean(1), z.var(1)
    model[1].running_mean.copy_(mean)
    model[1].running_var.copy_(var)
    exact = batchnorm_mismatch(model, batches)[0]
    assert exact.channels == 4 and abs(exact.var_ratio_median - 1) < 1e-5 and exact.mean_shift_median < 1e-5
    model[1].running_var.copy_(var / 4)
    model[1].running_mean.copy_(mean + (var + model[1].eps).sqrt())
    off = batchnorm_mismatch(model, batches)[0]
    assert abs(off.var_ratio_median - 4) < 1e-4 and abs(off.var_ratio_p10 - 4) < 1e-4
    assert abs(off.mean_shift_median - 1) < 1e-4


def _reproduce_on_constructed(tmp_path, cifar_root, command: str, images: int, out: str) -> int:
    """``reproduce.py COMMAND`` on the constructed checkpoint, reading ``images`` training images."""
    sd, _ = _constructed()
    torch.save(sd, tmp_path / "c.pt")
    reproduce = script("reproduce")
    return reproduce.main([command, "--arch", "VGG11", "--model_param", str(tmp_path / "c.pt"), "--data_root",
                           str(cifar_root), "--images", str(images), "--out", str(tmp_path / out), "--no_progress"])


def test_the_bn_mismatch_command_writes_json_and_csv(tmp_path, cifar_root, capsys):
    assert _reproduce_on_constructed(tmp_path, cifar_root, "bn-mismatch", 20, "mm") == 0
    found = json.loads((tmp_path / "mm" / "bn_mismatch.json").read_text())
    assert found["images"] == 20 and len(found["layers"]) == 8 and found["layers"][0]["layer"] == "features.1"
    assert (tmp_path / "mm" / "bn_mismatch.csv").read_text().count("\n") == 9
    assert "mean shift" in capsys.readouterr().out


@pytest.mark.slow
def test_the_diagnose_command_writes_json_csv_and_figure(tmp_path, cifar_root, monkeypatch, capsys):
    assert _reproduce_on_constructed(tmp_path, cifar_root, "diagnose", 40, "diag") == 0
    rows = json.loads((tmp_path / "diag" / "diagnose.json").read_text())
    assert len(rows) == 8 and rows[0]["duplicate_pairs"] == 2 and rows[2]["dead_bn"] == 3 and rows[2]["dead_relu"] >= 3
    assert (tmp_path / "diag" / "diagnose.csv").read_text().count("\n") == 9
    assert (tmp_path / "diag" / "diagnose.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "dup pairs" in out and "self-distance residue" in out and "cdist_float64" in out
    assert "residue_cdist_float64" in (tmp_path / "diag" / "diagnose.csv").read_text()


def test_self_distance_residues_of_the_usual_distance_formulas():
    """A planted case: 40 channels of large, offset weights. The official formula (A + Aᵀ − 2 diag) and explicit
    differences give a zero diagonal; torch.cdist (norms computed apart from the matrix product) leaves a rounding
    residue: about float64's epsilon in float64 (the order of the paper's 2e-15), float32's in float32."""
    gen = torch.Generator().manual_seed(0)
    vectors = (torch.randn(40, 300, generator=gen, dtype=torch.float64) + 3.0) * 10.0
    residues = self_distance_residues(vectors)
    assert residues["official_gram_float32"] == 0.0 and residues["explicit_float64"] == 0.0
    assert 1e-18 < residues["cdist_float64"] < 1e-13
    assert 1e-10 < residues["cdist_float32"] < 1e-4


def _reproduction(folder: Path, trained: float, official_pct: float, fold_pct: float, min_last: float) -> Path:
    rows = [{"model": "VGG11", "bn_mode": mode, "trained_acc": trained, "params": 10, "beta_95": 0.2,
             "acc_at_beta_95": trained - 1, "params_pct_at_beta_95": pct}
            for mode, pct in (("official", official_pct), ("fold", fold_pct))]
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"models": rows}))
    records = [{"model": "VGG11", "bn_mode": mode, "bn_correction": "none", "beta": beta, "acc_after": acc,
                "params_pct": pct} for mode, beta, acc, pct in
               (("official", 0.1, trained - 2, official_pct + 5), ("official", 0.2, trained - 1, official_pct),
                ("fold", 0.2, trained - 3, fold_pct))]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "diagnose" / "VGG11").mkdir(parents=True)
    layers = [{"min_distance": 0.3, "dead_bn": 1, "dead_relu": 2}, {"min_distance": min_last, "dead_bn": 0,
                                                                    "dead_relu": None}]
    (folder / "diagnose" / "VGG11" / "diagnose.json").write_text(json.dumps(layers))
    return folder


def test_controls_say_what_moved_beyond_the_seed_spread(tmp_path, capsys):
    base = _reproduction(tmp_path / "base", 79.0, 90.0, 80.0, 0.2)
    fp32 = _reproduction(tmp_path / "fp32", 79.5, 70.0, 80.5, 0.1)
    seed = _reproduction(tmp_path / "s1", 78.0, 88.0, 79.0, 0.25)
    reproduce = script("reproduce")
    assert reproduce.main(["controls", "--run", "base", str(base), "baseline", "--run", "fp32", str(fp32), "fp32",
                           "--run", "s1", str(seed), "seed 1", "--seed_run", "s1", "--out", str(tmp_path / "c")]) == 0
    summary = (tmp_path / "c" / "summary.md").read_text()
    assert ("**fp32** (fp32): trained accuracy +0.50 (within the seed spread); params kept at β95 (official) -20.00 "
            "(beyond the seed spread); accuracy at β 0.1 (official) +0.50 (within the seed spread); accuracy at β 0.2 "
            "(official) +0.50 (within the seed spread); params kept at β95 (fold) +0.50 (within the seed spread); "
            "accuracy at β 0.2 (fold) +0.50 (within the seed spread).") in summary
    assert "**seed 1** (s1): trained accuracy -1.00; params kept at β95 (official) -2.00;" in summary
    rows = (tmp_path / "c" / "controls.csv").read_text().splitlines()
    assert rows[3] == "fp32,fp32,79.50,0.1,1 / 2,official,0.2 → 70.0 (78.50),77.50 (75.0),78.50 (70.0)"
    assert rows[4] == "fp32,fp32,79.50,0.1,1 / 2,fold,0.2 → 80.5 (78.50),–,76.50 (80.5)"


@pytest.mark.slow
def test_a_training_followed_epoch_by_epoch(cifar_root, tmp_path, monkeypatch, capsys):
    from ifm.experiments.config import load_config
    from ifm.experiments.epochs import diagnose_epochs, kept_checkpoints, sweep_epochs
    from ifm.experiments.train import train_from_config
    from ifm.errors import IFMError
    config = load_config(ROOT / "cfg" / "vgg11_training.yml", [
        "train.epochs=2", "train.batch_size=16", "model.width=0.0625", "data.test_samples=20", "train.device=cpu",
        "train.save_every=1", "train.milestones=[1]", f"data.root={cifar_root}", f"output_dir={tmp_path}"])
    run_dir, _ = train_from_config(config, "vgg11_training", "epochs", progress=False)
    assert [c.epoch for c in kept_checkpoints(run_dir)] == [1, 2]
    lines = []
    rows = diagnose_epochs("VGG11", run_dir, tmp_path / "out", str(cifar_root), images=40, log=lines.append)
    assert [r["epoch"] for r in rows] == [1] * 8 + [2] * 8 and len(lines) == 2
    assert all(r["dead_relu"] is not None and "residue_cdist_float64" in r for r in rows)
    assert (tmp_path / "out" / "epochs.png").stat().st_size > 0
    assert (tmp_path / "out" / "epochs.csv").read_text().count("\n") == 17
    lines.clear()  # a second call diagnoses nothing again
    assert len(diagnose_epochs("VGG11", run_dir, tmp_path / "out", str(cifar_root), images=40,
                               log=lines.append)) == 16 and not lines
    table = sweep_epochs("VGG11", run_dir, [1, 2], tmp_path / "out", str(cifar_root), ("official", "repaired"),
                         betas=(0.1, 0.3), log=lambda line: None)
    assert [(r["epoch"], r["sweep"]) for r in table] == [(1, "official"), (1, "repaired"), (2, "official"),
                                                          (2, "repaired")]
    assert len(list(read_jsonl(tmp_path / "out" / "results.jsonl"))) == 8  # 2 epochs x 2 modes x 2 betas
    assert (tmp_path / "out" / "sweeps.png").stat().st_size > 0
    with pytest.raises(IFMError, match="no checkpoint of epoch 3"):
        sweep_epochs("VGG11", run_dir, [3], tmp_path / "out", str(cifar_root))


def test_epoch_figures_are_titled_by_the_training_run():
    from ifm.experiments.epochs import run_title
    assert run_title("VGG16", "runs/long_vgg16/checkpoints/VGG16") == "VGG16, long_vgg16"
    assert run_title("VGG16", "somewhere/my_run") == "VGG16, my_run"
