"""Data-free repair of merged channels, k-means clusters and parameter budgets (issue: merged models that keep their
accuracy without data)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import models
from ifm import channel_groups
from ifm.architectures import model_for_state_dict
from ifm.budget import params_at_widths, uniform_widths
from ifm.correction import correct_merged
from ifm.kmeans import (_hartigan, _lloyd, kept_width, kmeans_clusters, kmeans_partition, span_coordinates,
                        within_cluster_sum_of_squares)
from ifm.merge import IterativeMerger
from ifm.experiments.run import RunOptions, RunSpec
from ifm.experiments.arguments import cli
from ifm.experiments.loading import load_model
from ifm.experiments.selfmerge import merge_weights, run_self_merge
from ifm.pipeline import parameter_keys
from ifm.experiments.planted import copy_channel
from ifm.trace import trace_spaces
from tests.helpers import randomize_bn


def _checkpoint_with_duplicates(tmp_path, arch: str, stages=None) -> str:
    """A tiny ``arch`` with exact duplicates in several groups: producer rows and BN copied, consumer columns split
    (the network computes the same function)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sd = randomize_bn(models.create_model(arch, width=0.125).state_dict(), gen)
    for group in channel_groups(arch, sd, stages):
        for k in range(3):
            copy_channel(sd, group, k, group.width - 1 - k, split_columns=True)
    path = tmp_path / f"{arch}.pt"
    torch.save(sd, path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("arch,stages", [("VGG11", None), ("ResNet18", (1, 2, 3, 4))])
@pytest.mark.parametrize("rule", ["official", "mean"])
@pytest.mark.parametrize("bn_mode", ["official", "fold"])
@pytest.mark.parametrize("estimator", ["rows", "weights"])
def test_corrected_merge_of_exact_duplicates_keeps_the_function(tmp_path, arch, stages, rule, bn_mode, estimator):
    loaded = load_model(RunSpec(arch=arch, model_param=_checkpoint_with_duplicates(tmp_path, arch, stages)))
    result = merge_weights(loaded, 1e-9, bn_mode=bn_mode, stages=stages, rule=rule, bn_correction=estimator)
    assert result.n_merges >= 3 * len(result.widths)  # every duplicate merged
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    reference = loaded.model.double().eval()(x)
    merged = model_for_state_dict(loaded.arch, result.state_dict).double().eval()(x)
    assert (merged - reference).abs().max() <= 1e-5 * reference.abs().max()


def _naive_corrected_variance(sd, group, producer, members, rule) -> float:
    """The ``weights`` estimator written out: each member's concatenated vector (fused row and bias, BN γ and β,
    every consumer column), their cosines ρ̂, and Σ_ij ρ̂_ij a_i a_j (a = s·sign γ), ÷ n² for the mean rule, − eps."""
    w = sd[f"{producer.layer}.weight"].double()
    bias = sd.get(f"{producer.layer}.bias", torch.zeros(w.shape[0])).double()
    mean, var = sd[f"{producer.bn}.running_mean"].double(), sd[f"{producer.bn}.running_var"].double()
    gamma, beta = sd[f"{producer.bn}.weight"].double(), sd[f"{producer.bn}.bias"].double()
    s = (var + producer.eps).sqrt()
    vectors = []
    for i in members:
        k = gamma[i] / s[i]
        parts = [w[i].flatten() * k, (beta[i] + (bias[i] - mean[i]) * k).view(1), gamma[i].view(1), beta[i].view(1)]
        for m in group.members:
            c = sd[m.key].double()
            if m.axis == 1 and c.ndim >= 2:
                parts.append(c.reshape(c.shape[0], group.width, -1)[:, i].flatten())
        vectors.append(torch.cat(parts))
    v = torch.stack(vectors)
    u = v / v.norm(dim=1, keepdim=True)
    a = torch.stack([s[i] * gamma[i].sign() for i in members])
    total = (a @ (u @ u.T) @ a).item()
    return total / (len(members) ** 2 if rule == "mean" else 1) - producer.eps


@pytest.mark.slow
@pytest.mark.parametrize("arch,stages", [("VGG11", None), ("ResNet18", (1, 2, 3, 4))])
@pytest.mark.parametrize("rule", ["official", "mean"])
@pytest.mark.parametrize("shared", [True, False])
def test_weights_estimator_stores_the_variance_of_the_naive_formula(arch, stages, rule, shared):
    """Merged clusters of members that are not duplicates: every merged BN's variance against the formula written
    out (``shared``: the consumers' Gram matrices of the merge's first pass are read, else computed again)."""
    from ifm.correction import producers_of
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    sd = randomize_bn(models.create_model(arch, width=0.125).state_dict(), gen)
    for key, value in sd.items():
        if key.endswith(".weight") and value.ndim == 1:
            value.mul_(torch.where(torch.rand(value.shape, generator=gen) < 0.3, -1.0, 1.0))  # some γ negative
    arch_obj = load_model(RunSpec(arch=arch), initialise=True).arch
    graph = arch_obj.trace(sd)
    groups = channel_groups(arch_obj, sd, stages, rule=rule, graph=graph)
    merger = IterativeMerger(sd, groups, rule=rule, device="cpu", keep_column_grams=shared)
    result = merger.run(0.999, 0.6)
    assert bool(result.column_grams) == shared
    corrected = correct_merged(sd, result.state_dict, groups, result.clusters, rule, graph.batch_norms, "weights",
                               column_grams=result.column_grams)
    checked = 0
    for group in groups:
        for producer in producers_of(group, sd, graph.batch_norms):
            for position, members in enumerate(result.clusters[group.name]):
                if len(members) > 1 and producer.bn is not None:
                    expected = _naive_corrected_variance(sd, group, producer, members, rule)
                    got = corrected[f"{producer.bn}.running_var"][position].item()
                    assert got == pytest.approx(max(expected, 0.0), rel=1e-4, abs=1e-6)
                    checked += 1
    assert checked > 20 and max(len(c) for cs in result.clusters.values() for c in cs) > 2


def test_without_the_correction_official_merges_of_duplicates_change_the_function(tmp_path):
    loaded = load_model(RunSpec(arch="VGG11", model_param=_checkpoint_with_duplicates(tmp_path, "VGG11")))
    result = merge_weights(loaded, 1e-9)
    x = torch.rand(3, 3, 32, 32)
    change = (model_for_state_dict(loaded.arch, result.state_dict).eval()(x) - loaded.model.eval()(x)).abs().max()
    assert change > 1e-3  # summed variances of perfectly correlated members: the guard above is not vacuous


def _correlated_pair(rho: float, fan_in: int = 16, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A 1x1 conv with two output channels whose rows have cosine ``rho`` (so, on isotropic Gaussian inputs of mean
    0.5, the pre-activations have correlation ``rho``), its BN holding the true statistics."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(fan_in, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3))
    a, b = torch.randn(2, fan_in, generator=gen, dtype=torch.float64)
    b = b - (b @ a) / (a @ a) * a
    u, v = a / a.norm(), b / b.norm()
    rows = torch.stack([1.5 * u, 0.7 * (rho * u + math.sqrt(1 - rho ** 2) * v)])
    with torch.no_grad():
        model[0].weight.copy_(rows.view(2, fan_in, 1, 1))
        model[0].bias.copy_(torch.tensor([0.3, -0.2]))
        model[1].running_mean.copy_(model[0].bias + rows.float() @ torch.full((fan_in,), 0.5))  # E x = 0.5
        model[1].running_var.copy_(rows.pow(2).sum(1))  # Var(w·x) = |w|² for x ~ N(0, I)
        model[1].weight.copy_(torch.tensor([1.2, 0.8]))
    x = torch.randn(40000, fan_in, 1, 1, generator=gen) + 0.5
    return model, x


@pytest.mark.parametrize("rule", ["official", "mean"])
def test_corrected_variance_equals_the_measured_variance_of_the_merged_preactivation(rule):
    model, x = _correlated_pair(rho=0.6)
    sd = model.state_dict()
    groups = channel_groups(model, input_size=(16, 1, 1))
    result = IterativeMerger(sd, groups, rule=rule, device="cpu").merge_partition({groups[0].name: [[0, 1]]})
    assert result.widths == {groups[0].name: 1}
    batch_norms = trace_spaces(model, (16, 1, 1)).batch_norms
    corrected = correct_merged(sd, result.state_dict, groups, result.clusters, rule, batch_norms, "rows")
    merged_conv = nn.Conv2d(16, 1, 1)
    merged_conv.load_state_dict({"weight": result.state_dict["0.weight"], "bias": result.state_dict["0.bias"]})
    with torch.no_grad():
        measured = merged_conv(x).var().item()
    var_c, var_u = corrected["1.running_var"].item(), result.state_dict["1.running_var"].item()
    assert abs(var_c - measured) < 0.03 * measured  # sampling error of 40,000 samples: about 0.7 %
    assert abs(var_u - measured) > 0.15 * measured  # the uncorrected statistics are far off


def test_rescaling_without_bn_gives_the_merged_preactivation_the_members_scale():
    model, x = _correlated_pair(rho=0.6)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("1.")}
    plain = nn.Sequential(nn.Conv2d(16, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3))
    plain.load_state_dict({"0.weight": sd["0.weight"], "0.bias": sd["0.bias"], "3.weight": sd["4.weight"],
                           "3.bias": sd["4.bias"]})
    sd = plain.state_dict()
    groups = channel_groups(plain, input_size=(16, 1, 1))
    result = IterativeMerger(sd, groups, device="cpu").merge_partition({groups[0].name: [[0, 1]]})
    corrected = correct_merged(sd, result.state_dict, groups, result.clusters, "official", {}, "rows")
    rows = sd["0.weight"].flatten(1).double()
    merged_row = corrected["0.weight"].flatten().double()
    # |k·(w1 + w2)| = |w1| + |w2|: the merged channel has the summed scale of its (correlated) members
    torch.testing.assert_close(merged_row.norm(), rows.norm(dim=1).sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(corrected["0.bias"], result.state_dict["0.bias"])


@pytest.mark.slow
def test_kmeans_finds_separated_clusters_and_gives_the_requested_widths():
    gen = np.random.default_rng(0)
    centres = gen.normal(size=(5, 30)) * 10
    labels = gen.permutation(np.repeat(np.arange(5), 8))
    points = centres[labels] + gen.normal(size=(40, 30)) * 0.1
    clusters = kmeans_clusters(points, 5)
    assert sorted(sorted(c) for c in clusters) == sorted(np.where(labels == k)[0].tolist() for k in range(5))
    assert sorted(len(c) for c in kmeans_clusters(np.zeros((7, 3)), 4)) == [1, 1, 1, 4]  # empty clusters filled

    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    groups = channel_groups("VGG11", sd)
    partition = kmeans_partition(sd, groups, 0.5)
    result = IterativeMerger(sd, groups, rule="mean", device="cpu").merge_partition(partition)
    assert result.widths == {g.name: kept_width(g.width, 0.5) for g in groups}
    assert result.widths == {g.name: g.width // 2 for g in groups}
    first = groups[0]  # (reads the image: its rows are merged by its own clusters only) rows are the clusters' means
    rows = sd[f"{first.layer}.weight"].flatten(1)
    expected = torch.stack([rows[c].mean(0) for c in result.clusters[first.name]])
    torch.testing.assert_close(result.state_dict[f"{first.layer}.weight"].flatten(1), expected)


@pytest.mark.slow
@pytest.mark.parametrize("n,d,k", [(64, 300, 32), (128, 40, 40), (96, 500, 12)])
def test_kmeans_reaches_the_optimum_of_a_reference_implementation(n, d, k):
    sklearn = pytest.importorskip("sklearn.cluster")
    points = np.random.default_rng(n).normal(size=(n, d))  # like trained weights: no cluster structure, many optima
    reference = sklearn.KMeans(k, n_init=10, random_state=0).fit(points)
    clusters = [np.where(reference.labels_ == c)[0] for c in range(k)]
    np.testing.assert_allclose(within_cluster_sum_of_squares(points, clusters), reference.inertia_, rtol=1e-9)
    ours = kmeans_clusters(points, k)
    assert sorted(c for cluster in ours for c in cluster) == list(range(n)) and len(ours) == k
    assert within_cluster_sum_of_squares(points, ours) <= 1.01 * reference.inertia_


def test_span_coordinates_keep_every_distance():
    from scipy.spatial.distance import pdist
    points = np.random.default_rng(0).normal(size=(20, 300))
    coordinates = span_coordinates(points)
    assert coordinates.shape[1] <= 20
    np.testing.assert_allclose(pdist(coordinates), pdist(points), rtol=1e-10)


def test_hartigan_moves_leave_no_single_move_that_lowers_the_sum():
    gen = np.random.default_rng(1)
    points = gen.normal(size=(40, 3))
    x, k = span_coordinates(points), 6
    lloyd = _lloyd(x, (x ** 2).sum(1), x[:k].copy(), 300)  # a poor start: Lloyd stops at a weak local optimum

    def total(labels):
        return within_cluster_sum_of_squares(points, [np.where(labels == c)[0] for c in range(k)])
    labels = _hartigan(x, lloyd.astype(np.int64), k, 300)
    assert total(labels) < total(lloyd) * 0.999
    for i in range(len(points)):  # brute force: no single move lowers the sum further
        if np.sum(labels == labels[i]) == 1:
            continue
        for c in set(range(k)) - {labels[i]}:
            moved = labels.copy()
            moved[i] = c
            assert total(moved) >= total(labels) - 1e-9


def _record(tmp_path, path, **spec) -> dict:
    return run_self_merge(RunSpec(arch="VGG11", model_param=str(path), **spec),
                          RunOptions(results=str(tmp_path / "r.jsonl"), progress=False))


@pytest.mark.slow
def test_ifm_budget_lands_within_one_channel_merge(tmp_path, tiny_checkpoints):
    record = _record(tmp_path, tiny_checkpoints["VGG11"], target_params=70.0)
    assert record["target_params"] == 70.0 and record["allocation"] == "ifm"
    assert record["params_pct"] >= 70.0
    loaded = load_model(RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"])))
    keys = parameter_keys(loaded.model)
    groups = channel_groups(loaded.arch, loaded.state_dict)
    total = sum(loaded.state_dict[k].numel() for k in keys)
    widths = record["widths"]
    one_merge = max(100.0 * (params_at_widths(loaded.state_dict, keys, groups, widths)
                             - params_at_widths(loaded.state_dict, keys, groups, {**widths, g: widths[g] - 1})) / total
                    for g in widths if widths[g] > 1)
    assert record["params_pct"] - 70.0 <= one_merge
    again = merge_weights(loaded, record["beta"], max_merges=record["max_merges"])  # the record reproduces it
    assert again.widths == widths


@pytest.mark.slow
def test_uniform_budget_merges_the_largest_equal_share(tmp_path, tiny_checkpoints):
    record = _record(tmp_path, tiny_checkpoints["VGG11"], target_params=40.0, allocation="uniform")
    ratio = record["max_ratio"]
    assert record["params_pct"] >= 40.0
    assert record["widths"] == {g: kept_width(w, ratio) for g, w in record["original_widths"].items()}
    loaded = load_model(RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"])))
    keys, groups = parameter_keys(loaded.model), channel_groups(loaded.arch, loaded.state_dict)
    total = sum(loaded.state_dict[k].numel() for k in keys)
    larger = next(r for r in np.arange(ratio, 1.0, 1e-3) if uniform_widths(groups, r) != record["widths"])
    assert 100.0 * params_at_widths(loaded.state_dict, keys, groups, uniform_widths(groups, larger)) / total < 40.0


@pytest.mark.slow
def test_kmeans_baseline_through_the_script_reports_its_settings(tmp_path, tiny_checkpoints):
    record = _record(tmp_path, tiny_checkpoints["VGG11"], method="kmeans", max_ratio=0.5, bn_correction="weights")
    assert record["method"] == "kmeans" and record["merge_rule"] == "mean" and record["bn_correction"] == "weights"
    assert record["widths"] == {g: kept_width(w, 0.5) for g, w in record["original_widths"].items()}
    assert record["correction_seconds"] > 0


@pytest.mark.parametrize("args,message", [
    (["--target_params", "0"], "--target_params"),
    (["--target_params", "150"], "--target_params"),
    (["--allocation", "uniform"], "--allocation uniform applies with --target_params"),
    (["--baseline", "kmeans"], "--baseline kmeans"),
])
def test_bad_budget_options_are_one_line(tmp_path, tiny_checkpoints, capsys, args, message):
    code = cli("cifar10", "vgg", ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                                  "--no_eval", "--no_progress", "--results", str(tmp_path / "r.jsonl"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("rule", ["official", "mean"])
def test_folded_rescale_keeps_the_mean_and_restores_the_members_scale(rule):
    from ifm.batchnorm import fold_batchnorm, reset_identity_bn, without_bn_statistics
    model, x = _correlated_pair(rho=0.6)
    sd = model.state_dict()
    groups = channel_groups(model, input_size=(16, 1, 1))
    batch_norms = trace_spaces(model, (16, 1, 1)).batch_norms
    folded = fold_batchnorm(sd, batch_norms)
    merger = IterativeMerger(folded, without_bn_statistics(groups, batch_norms), device="cpu", rule=rule)
    result = merger.merge_partition({groups[0].name: [[0, 1]]})
    plain = reset_identity_bn(result.state_dict, batch_norms)
    corrected = correct_merged(sd, plain, groups, result.clusters, rule, batch_norms, "rows", folded=True)

    def preactivation(state):
        conv = nn.Conv2d(16, 1, 1)
        conv.load_state_dict({"weight": state["0.weight"], "bias": state["0.bias"]})
        with torch.no_grad():
            return (conv(x) + state["1.bias"]).flatten().double()
    before, after = preactivation(plain), preactivation(corrected)
    with torch.no_grad():
        members = model[1](model[0](x)).flatten(2).squeeze(-1).double()  # the members' BN outputs
    scale = members.std(0).sum() / (2 if rule == "mean" else 1)  # the members' summed (or mean) scale
    assert abs(after.mean() - before.mean()) < 0.01 * scale  # the mean is kept
    assert abs(after.std() - scale) < 0.02 * scale
    assert abs(before.std() - scale) > 0.1 * scale
