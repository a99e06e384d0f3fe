"""BN folding, BN recalibration and pruning baselines (issue: beyond the paper)."""
import pytest
import torch

import models
from ifm import channel_groups, iterative_feature_merging, model_for_state_dict
from ifm.batchnorm import (fold_batchnorm, recalibrate_bn, reset_identity_bn, without_bn_statistics)
from ifm.pruning import channel_scores, prune_to_widths
from ifm.experiments.io import read_jsonl
from ifm.experiments.arguments import cli
from ifm.experiments.planted import copy_channel
from tests.helpers import randomize_bn


def _vgg_with_duplicates():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sd = randomize_bn(models.create_model("VGG11", width=0.125).state_dict(), gen)
    groups = channel_groups("VGG11", sd)
    for group in groups[1:6]:
        copy_channel(sd, group, 0, 3, split_columns=True)  # an exact duplicate, outgoing weights split
    return sd, groups


@pytest.mark.slow
def test_folding_preserves_the_function():
    sd, _ = _vgg_with_duplicates()
    x = torch.rand(4, 3, 32, 32)
    original = model_for_state_dict("VGG11", sd).eval()(x)
    folded = model_for_state_dict("VGG11", fold_batchnorm(sd)).eval()(x)
    torch.testing.assert_close(folded, original, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fold_merges_duplicates_exactly_and_official_does_not():
    sd, groups = _vgg_with_duplicates()
    x = torch.rand(4, 3, 32, 32)
    reference = model_for_state_dict("VGG11", sd).eval()(x)
    official = iterative_feature_merging(sd, groups, beta=1e-9)
    folded_sd = fold_batchnorm(sd)
    fold = iterative_feature_merging(folded_sd, without_bn_statistics(groups), beta=1e-9)
    assert official.n_merges == fold.n_merges == 5
    out_fold = model_for_state_dict("VGG11", reset_identity_bn(fold.state_dict)).eval()(x)
    out_official = model_for_state_dict("VGG11", official.state_dict).eval()(x)
    assert (out_fold - reference).abs().max() < 1e-5
    assert (out_official - reference).abs().max() > 1e-3  # summed BN statistics change the function


def test_recalibration_sets_running_statistics_to_the_data_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    x = torch.randn(32, 3, 8, 8)
    recalibrate_bn(model, [(x[:16], None), (x[16:], None)])
    with torch.no_grad():
        y = model[0](x)
    torch.testing.assert_close(model[1].running_mean, y.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # the cumulative average of the two batches' unbiased variances
    halves = [y[:16], y[16:]]
    expected_var = sum(h.var(dim=(0, 2, 3), unbiased=True) for h in halves) / 2
    torch.testing.assert_close(model[1].running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert not model.training


def test_l1_and_random_pruning_keep_the_requested_widths():
    sd, groups = _vgg_with_duplicates()
    w0 = sd["features.0.weight"]  # 8 channels: four with many small weights, four with one large weight
    w0.zero_()
    w0[:4] = 0.1  # L1 2.7, L2 0.27
    w0[4:, 0, 0, 0] = 1.5  # L1 1.5, L2 2.25
    w0 += 0.001 * torch.arange(w0.numel()).reshape(w0.shape) / w0.numel()  # no ties
    widths = {g.name: max(1, g.width // 2) for g in groups}
    pruned = prune_to_widths(sd, groups, widths, "l1")
    model = model_for_state_dict("VGG11", pruned)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    first = groups[0]
    # the L1 norm of each channel's producing weights (conv rows and conv bias), computed here directly
    l1 = sd["features.0.weight"].abs().sum(dim=(1, 2, 3)).double()
    assert sd["features.0.weight"].ndim == 4
    torch.testing.assert_close(channel_scores(sd, first), l1)
    keep = l1.topk(widths[first.name]).indices.sort().values
    torch.testing.assert_close(pruned["features.0.weight"], sd["features.0.weight"][keep])
    l2 = sd["features.0.weight"].pow(2).sum(dim=(1, 2, 3)).double()
    assert set(l2.topk(widths[first.name]).indices.tolist()) != set(keep.tolist())  # the test tells L1 from L2
    r0, r1 = (prune_to_widths(sd, groups, widths, "random", seed) for seed in (0, 1))
    assert r0["features.0.weight"].shape == pruned["features.0.weight"].shape
    assert not torch.equal(r0["features.0.weight"], r1["features.0.weight"])
    with pytest.raises(ValueError):
        prune_to_widths(sd, groups, widths, "l2")


@pytest.mark.slow
def test_cli_options_and_records(tiny_checkpoints, cifar_root, tmp_path):
    results = tmp_path / "r.jsonl"
    base = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--data_root", str(cifar_root),
            "--threshold", "0.6", "--results", str(results), "--no_progress"]
    assert cli("cifar10", "vgg", base) == 0
    assert cli("cifar10", "vgg", base + ["--bn_mode", "fold"]) == 0
    assert cli("cifar10", "vgg", base + ["--recalibrate_bn", "40"]) == 0
    assert cli("cifar10", "vgg", base + ["--baseline", "random", "--seeds", "3"]) == 0
    assert cli("cifar10", "vgg", base + ["--baseline", "l1"]) == 0
    default, fold, recal, rand, l1 = read_jsonl(results)
    assert (default["method"], default["bn_mode"], default["recalibrate_bn"]) == ("ifm", "official", 0)
    assert fold["bn_mode"] == "fold" and recal["recalibrate_bn"] == 40
    assert rand["method"] == "random" and len(rand["acc_after_runs"]) == 3 and "acc_after_std" in rand
    assert l1["method"] == "l1" and l1["widths"] == default["widths"]
    assert rand["params_after"] == default["params_after"] == l1["params_after"]
