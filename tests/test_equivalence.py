"""The equivalence measurement: CKA against a direct computation and its invariances, stitching a model to
itself, exact duplicates merged with folded BN, cluster correlations, and the command end to end."""
import copy

import pytest
import torch

import models
from ifm import channel_groups
from ifm.experiments.data import load_cifar10
from ifm.experiments.equivalence import (LinearCKA, cluster_correlation, linear_cka, measure_equivalence,
                             random_pair_correlation)
from ifm.errors import IFMError
from ifm.experiments.planted import copy_channel
from tests.helpers import script


def naive_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Kornblith et al.'s definition with n x n Gram matrices (debiased: Song et al.'s unbiased HSIC)."""
    x, y = x.double(), y.double()
    k, l = x @ x.T, y @ y.T
    n = k.shape[0]

    def hsic(a, b):
        if not debiased:
            h = torch.eye(n, dtype=a.dtype) - 1.0 / n
            return torch.trace(a @ h @ b @ h)
        a, b = a - torch.diag(a.diagonal()), b - torch.diag(b.diagonal())
        one = torch.ones(n, dtype=a.dtype)
        return (torch.trace(a @ b) + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ a @ b @ one)) / (n * (n - 3))
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_a_direct_computation_in_batches(debiased):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 7, generator=gen)
    y = x[:, :5] @ torch.randn(5, 4, generator=gen) + 0.5 * torch.randn(60, 4, generator=gen) + 3.0
    batched = LinearCKA(debiased)
    for k in range(0, 60, 16):
        batched.update(x[k:k + 16], y[k:k + 16])
    assert batched.value() == pytest.approx(naive_cka(x, y, debiased), rel=1e-9, abs=1e-12)
    assert linear_cka(x, y, debiased) == pytest.approx(batched.value(), rel=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_one_for_itself_and_invariant_to_rotations_and_scaling(debiased):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x.double() @ q, debiased) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 7.5 * x, debiased) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(50, 3, generator=gen)
    base = linear_cka(x, y, debiased)
    assert linear_cka(x.double() @ q, 0.1 * y.double(), debiased) == pytest.approx(base, rel=1e-9)
    assert base < 0.5  # unrelated features are not similar
    skewed = x * torch.tensor([10.0, 1, 1, 1, 1, 1])  # not invariant to an arbitrary invertible map
    assert linear_cka(x, skewed, debiased) < 0.99


def test_cluster_and_random_pair_correlations_match_numpy():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(200, 3, generator=gen)
    feats = torch.cat([base, base[:, :1] + 0.1 * torch.randn(200, 1, generator=gen)], 1).double()
    covariance = torch.cov(feats.T)
    corr = torch.corrcoef(feats.T)
    clusters = [[0, 3], [1], [2]]
    assert cluster_correlation(covariance, clusters) == pytest.approx(float(corr[0, 3]), rel=1e-9)
    assert cluster_correlation(covariance, [[1], [2]]) is None
    r = random_pair_correlation(covariance, pairs=5000)
    off = corr[~torch.eye(4, dtype=torch.bool)]
    assert min(off) - 1e-9 <= r <= max(off) + 1e-9


def _data(cifar_root):
    return load_cifar10(cifar_root, "test", progress=False), load_cifar10(cifar_root, "train", progress=False)


@pytest.mark.slow
def test_stitching_a_model_to_itself_gives_its_own_accuracy(cifar_root):
    torch.manual_seed(0)
    model = models.create_model("VGG11", width=0.125).eval()
    groups = channel_groups("VGG11", model.state_dict())
    test, train = _data(cifar_root)
    rows = measure_equivalence(model, {0.0: (copy.deepcopy(model), {})}, groups, test, train, progress=False)
    assert len(rows) == len(groups)
    for r in rows:
        assert r.cka == pytest.approx(1.0, abs=1e-9)
        assert r.stitched_acc == r.reverse_stitched_acc == r.merged_acc == r.original_acc


@pytest.mark.slow
def test_merging_exact_duplicates_with_folded_bn_is_equivalent_everywhere(cifar_root, tmp_path):
    """Every channel duplicated once: IFM (BN folded) merges every pair, and the merged model computes the
    same function, so CKA is 1 at every layer and every stitch keeps the original accuracy."""
    from ifm.architectures import get_architecture, model_for_state_dict
    from ifm.experiments.loading import LoadedModel
    from ifm.experiments.selfmerge import merge_weights
    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    gen = torch.Generator().manual_seed(0)
    for key, value in sd.items():  # non-trivial BN statistics
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    groups = channel_groups("VGG11", sd)
    for group in groups:
        half = group.width // 2
        for k in range(half):
            copy_channel(sd, group, k, k + half)
    original = model_for_state_dict("VGG11", sd).eval()
    loaded = LoadedModel(get_architecture("VGG11"), sd, "dup", "dup", None, original)
    result = merge_weights(loaded, 1e-6, bn_mode="fold")
    assert result.widths == {g.name: g.width // 2 for g in groups}
    merged = model_for_state_dict("VGG11", result.state_dict).eval()
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(merged(x), original(x), rtol=1e-4, atol=1e-4)
    test, train = _data(cifar_root)
    rows = measure_equivalence(original, {1e-6: (merged, result.clusters)}, groups, test, train, progress=False)
    for r in rows:
        assert r.features_merged * 2 == r.features_original
        assert r.cka == pytest.approx(1.0, abs=1e-6)
        assert r.stitched_acc == r.reverse_stitched_acc == r.merged_acc == r.original_acc
        assert r.merged_clusters == r.features_merged and r.cluster_correlation == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_equivalence_command_end_to_end(tiny_checkpoints, cifar_root, tmp_path, capsys):
    reproduce = script("reproduce")
    argv = ["equivalence", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--data_root",
            str(cifar_root), "--betas", "0.3", "0.6", "--train_samples", "20", "--out", str(tmp_path), "--no_progress"]
    assert reproduce.main(argv) == 0
    lines = (tmp_path / "equivalence.csv").read_text().splitlines()
    assert lines[0].startswith("beta,layer,features_original,features_merged,cka,stitched_acc")
    assert len(lines) == 1 + 2 * 8 and (tmp_path / "equivalence.png").stat().st_size > 0
    argv_resnet = ["equivalence", "--arch", "ResNet18", "--model_param", str(tiny_checkpoints["ResNet18"]),
                   "--data_root", str(cifar_root), "--betas", "0.3", "--out", str(tmp_path), "--no_progress"]
    assert reproduce.main(argv_resnet) == 2
    assert "CIFAR VGGs" in capsys.readouterr().err


def test_non_vgg_models_are_refused():
    from ifm.experiments.equivalence import vgg_boundaries
    model = models.create_model("ResNet18", width=0.125)
    with pytest.raises(IFMError, match="CIFAR VGGs"):
        vgg_boundaries(model, channel_groups("ResNet18", model.state_dict()))
