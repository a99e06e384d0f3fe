"""Data-free calibration images synthesised from BN statistics, and --synthetic_bn (beyond the paper)."""

import pytest
import torch
from torch import nn

import models
from ifm import channel_groups, iterative_feature_merging, model_for_state_dict
from ifm.architectures import get_architecture
from ifm.batchnorm import recalibrate_bn
from ifm.pipeline import reestimate_statistics, synthetic_batches
from ifm.experiments.io import read_jsonl
from ifm.experiments.arguments import cli
from ifm.experiments.planted import copy_channel
from ifm.synthesis import synthesize_images
from tests.helpers import refused_in_one_line, script

#: the data the models' BN statistics are measured on: per-pixel Gaussian, off-centre, channels of unequal scale
SHIFT, SCALE = torch.tensor([0.8, -0.5, 0.2]).view(1, 3, 1, 1), torch.tensor([3.0, 0.5, 1.5]).view(1, 3, 1, 1)


def data(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return SHIFT + SCALE * torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def measured_statistics(model: nn.Module, size: int = 32) -> nn.Module:
    """``model`` with BN statistics measured on 256 images of :func:`data` (what training would have stored)."""
    return recalibrate_bn(model, [(data(128, 1, size), None), (data(128, 2, size), None)])


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return measured_statistics(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 3)), size=16)


@pytest.mark.slow
def test_synthetic_images_reproduce_every_stored_bn_statistic():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    made = synthesize_images(model, (3, 16, 16), n=16, seed=0, iterations=200)
    assert made.images.shape == (16, 3, 16, 16) and made.final_loss < made.start_loss / 20
    # the statistics each BN sees, by a forward written out here
    with torch.no_grad():
        z1 = model[0](made.images)
        z2 = model[4](model[3](model[2](model[1](z1))))
    for z, bn in ((z1, model[1]), (z2, model[5])):
        torch.testing.assert_close(z.mean(dim=(0, 2, 3)), bn.running_mean, atol=0.05 * bn.running_var.sqrt().max(),
                                   rtol=0)
        torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), bn.running_var.sqrt(), rtol=0.05, atol=0)
    # far from what the noise it started from gives
    noise = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model[0](noise).std(dim=(0, 2, 3)) / model[1].running_var.sqrt() - 1).abs().max() > 0.2
    # the network is left as it was: weights, statistics, mode and gradient flags
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    again = synthesize_images(model, (3, 16, 16), n=16, seed=0, iterations=200)
    assert torch.equal(again.images, made.images)  # seeded
    assert len(synthesize_images(model, (3, 16, 16), n=70, iterations=2).images) == 70  # two chunks


def test_no_batch_norm_is_a_clear_error():
    with pytest.raises(ValueError, match="need BatchNorm"):
        synthesize_images(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (3, 8, 8), n=4)
    with pytest.raises(ValueError, match="positive"):
        synthesize_images(small_cnn(), (3, 16, 16), n=0)


def _vgg_with_duplicates() -> tuple[dict, list]:
    """A narrow VGG11 with exact duplicates (rows and BN copied, columns split) and BN statistics measured on
    :func:`data` after the copies were made (so the duplicates' statistics are equal too)."""
    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    groups = channel_groups("VGG11", sd)
    for group in groups[1:6]:
        copy_channel(sd, group, 0, 3, split_columns=True)
    model = measured_statistics(model_for_state_dict("VGG11", sd))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, groups


@pytest.mark.slow
def test_synthetic_recalibration_repairs_the_official_merge_of_duplicates():
    """The official merge sums the duplicates' variances where the merged channel has 4× one: the output
    changes. Statistics re-estimated on images synthesised from the original network give the function back."""
    sd, groups = _vgg_with_duplicates()
    official = iterative_feature_merging(sd, groups, beta=1e-9)
    assert official.n_merges == 5
    original = model_for_state_dict("VGG11", sd).eval()
    images = synthesize_images(original, (3, 32, 32), n=16, seed=0, iterations=300, lr=0.25).images
    repaired = reestimate_statistics(get_architecture("VGG11"), official.state_dict, synthetic_batches(images))
    assert set(repaired) == set(official.state_dict)
    x = data(64, seed=7)
    with torch.no_grad():
        reference = original(x)
        error_official = (model_for_state_dict("VGG11", official.state_dict).eval()(x) - reference).norm()
        error_repaired = (model_for_state_dict("VGG11", repaired).eval()(x) - reference).norm()
        # on noise the merged network is no better: it is the images that carry the statistics
        noise = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        on_noise = reestimate_statistics(get_architecture("VGG11"), official.state_dict, synthetic_batches(noise))
        error_noise = (model_for_state_dict("VGG11", on_noise).eval()(x) - reference).norm()
    assert error_repaired < 0.05 * reference.norm()
    assert error_official > 3 * error_repaired and error_noise > 3 * error_repaired


@pytest.mark.slow
def test_cli_synthetic_bn_records_caches_and_saves(tiny_checkpoints, cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ifm.synthesis.ITERATIONS", 20)
    results, merged = tmp_path / "r.jsonl", tmp_path / "m.pt"
    base = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--data_root", str(cifar_root),
            "--threshold", "0.6", "--results", str(results), "--no_progress", "--workers", "0"]
    assert cli("cifar10", "vgg", base + ["--synthetic_bn", "8", "--save_merged", str(merged)]) == 0
    made = capsys.readouterr().out  # where the images go, and that they will be reused
    assert "synthetic images: 8 made in" in made and str(tmp_path / "synthetic_images") in made and "reused" in made
    assert cli("cifar10", "vgg", base + ["--synthetic_bn", "8"]) == 0
    assert "synthetic images: 8 reused from " + str(tmp_path / "synthetic_images") in capsys.readouterr().out
    assert cli("cifar10", "vgg", base) == 0
    first, second, plain = read_jsonl(results)
    assert first["synthetic_bn"] == 8 and plain["synthetic_bn"] == 0 and "synthesis" not in plain
    assert first["synthesis"]["cached"] is False and second["synthesis"]["cached"] is True
    assert first["synthesis"]["final_loss"] < first["synthesis"]["start_loss"]
    assert first["acc_after"] == second["acc_after"] and first["n_merges"] == plain["n_merges"]
    # the saved checkpoint holds the re-estimated statistics: each BN's running mean is its input's mean
    cached = next((tmp_path / "synthetic_images").glob("*_n8_it20.pt"))
    images = torch.load(cached)["images"]
    state = torch.load(merged, weights_only=True)
    model = model_for_state_dict("VGG11", state).eval()
    with torch.no_grad():
        z = model.features[0](images)
    torch.testing.assert_close(model.features[1].running_mean, z.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra,message", [(["--synthetic_bn", "-1"], "--synthetic_bn must be 0 or more"),
                                           (["--synthetic_bn", "8", "--recalibrate_bn", "8"], "give one of them")])
def test_cli_synthetic_bn_bad_input(extra, message, tiny_checkpoints, tmp_path, capsys):
    refused_in_one_line(tiny_checkpoints["VGG11"], extra, message, tmp_path / "r.jsonl", capsys)


def test_bench_synthesis_prints_a_cost_and_ratio_per_variant(tiny_checkpoints, capsys):
    bench_synthesis = script("bench_synthesis")
    bench_synthesis.main(["--model_param", str(tiny_checkpoints["VGG11"]), "--chunks", "8", "64", "--steps", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("64", "contiguous"), ("8", "contiguous"), ("64", "channels-last")]
    assert rows[0][-1] == "1.00" and all(float(r[3]) > 0 and float(r[-1]) > 0 for r in rows)


def test_cli_synthesis_steps_are_used_recorded_and_cached_apart(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ifm.synthesis.ITERATIONS", 9)  # the library's default, smoke-sized
    results = tmp_path / "r.jsonl"
    base = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--no_eval", "--threshold", "0.6",
            "--results", str(results), "--no_progress", "--synthetic_bn", "8"]
    assert cli("cifar10", "vgg", base + ["--synthesis_steps", "3"]) == 0
    assert cli("cifar10", "vgg", base) == 0
    fewer, default = read_jsonl(results)
    assert fewer["synthesis"]["iterations"] == 3 and fewer["synthesis_steps"] == 3
    assert default["synthesis"]["iterations"] == 9 and default["synthesis_steps"] is None
    assert fewer["synthesis"]["final_loss"] != default["synthesis"]["final_loss"]
    assert sorted(p.name.split("_", 1)[1] for p in (tmp_path / "synthetic_images").iterdir()) == ["n8_it3.pt",
                                                                                                  "n8_it9.pt"]
    capsys.readouterr()
    refused_in_one_line(tiny_checkpoints["VGG11"], ["--synthetic_bn", "8", "--synthesis_steps", "0"],
                        "--synthesis_steps must be 1 or more", tmp_path / "bad.jsonl", capsys)
