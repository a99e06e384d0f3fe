"""IFM merging: exact agreement with the naive official algorithm, function preservation, edge cases."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import models
from ifm import (IterativeMerger, build_groups, chain_spaces, channel_groups, iterative_feature_merging,
                 model_for_state_dict, slim_model)
from ifm.gram import GroupGram, gram_matrix
from ifm.experiments.planted import copy_channel
from tests.helpers import marked_slow, plain_cnn, randomize_bn
from ifm.naive import naive_distance, naive_ifm


def _tv_vgg11_small():
    import torchvision
    model = torchvision.models.vgg11(weights=None)
    model.classifier[0], model.classifier[3], model.classifier[6] = nn.Linear(25088, 48), nn.Linear(48, 40), \
        nn.Linear(40, 10)
    return model


def _tv(name):
    import torchvision
    return lambda: getattr(torchvision.models, name)(weights=None, num_classes=10)


CASES = {  # name -> (arch, builder, near-duplicate noise, [(beta, max_ratio)])
    "VGG11": ("VGG11", lambda: models.create_model("VGG11", width=0.25), 0.05, [(0.3, 1.0), (0.8, 0.2)]),
    "VGG16": ("VGG16", lambda: models.create_model("VGG16", width=0.125), 0.05, [(0.5, 1.0), (0.9, 0.3)]),
    "ResNet18": ("ResNet18", lambda: models.create_model("ResNet18", width=0.25), 0.05, [(0.5, 1.0), (0.9, 0.1)]),
    "ResNet50": ("ResNet50", lambda: models.create_model("ResNet50", width=0.125), 0.05, [(0.6, 1.0)]),
    "tv_resnet18": ("resnet18", _tv("resnet18"), 0.0, [(0.05, 1.0), (0.9, 0.01)]),
    "tv_resnet50": ("resnet50", _tv("resnet50"), 0.0, [(0.05, 0.01)]),
    "tv_vgg11": ("vgg11", _tv_vgg11_small, 0.0, [(0.05, 1.0), (0.9, 0.01)]),
}


def _weights_with_duplicates(case: str, seed: int = 0):
    arch, build, noise, _ = CASES[case]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sd = randomize_bn(build().state_dict(), gen)
    groups = channel_groups(arch, sd)
    for group in groups:  # near (or exact) copies: a few per group, distinct sources
        n = group.width
        for k in range(min(3, n // 4)):
            copy_channel(sd, group, src=k, dst=n - 1 - k, noise=noise * (k + 1), generator=gen)
    return arch, sd, channel_groups(arch, sd)


def _naive_log(log):
    return [(it, name, min(i, j), max(i, j)) for it, name, i, j in log]


#: every case in the official order; the layerwise order (the same code but the visiting loop) on the smaller ones
NAIVE_RUNS = [(case, order) for case in CASES for order in ("official", "layerwise")
              if order == "official" or case not in ("tv_resnet50", "tv_vgg11", "ResNet50", "tv_resnet18")]


@pytest.mark.slow
@pytest.mark.parametrize("case,order", NAIVE_RUNS)
def test_matches_naive_official_algorithm(case, order):
    arch, sd, groups = _weights_with_duplicates(case)
    for beta, max_ratio in CASES[case][3]:
        result = iterative_feature_merging(sd, groups, beta=beta, max_ratio=max_ratio, order=order)
        params, widths, log = naive_ifm(sd, [(g.name, g.width, g.members) for g in groups], beta, max_ratio, order)
        assert result.n_merges > 0
        assert [(s.iteration, s.group, s.i, s.j) for s in result.merge_log] == _naive_log(log)
        assert result.widths == widths
        for key, value in params.items():
            torch.testing.assert_close(result.state_dict[key].double(), value, rtol=1e-6, atol=1e-6)
        slim = model_for_state_dict(arch, result.state_dict)
        assert [sum(len(c) for c in cl) for cl in result.clusters.values()] == list(result.original_widths.values())
        assert [len(cl) for cl in result.clusters.values()] == list(result.widths.values())
        x = torch.randn(1, 3, 32 if arch[0].isupper() else 64, 32 if arch[0].isupper() else 64)
        assert slim.eval()(x).shape == (1, 10)


def test_merging_exact_duplicates_preserves_the_function():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = plain_cnn(widths=(6, 8, 5)).double()
    sd = model.state_dict()
    groups = build_groups(sd, chain_spaces(sd))
    for group, (src, dst) in zip(groups, [(0, 4), (2, 7), (1, 3), (5, 6)]):
        copy_channel(sd, group, src, dst, split_columns=True, generator=gen)
    model.load_state_dict(sd)
    result = iterative_feature_merging(sd, groups, beta=1e-9)
    assert result.widths == {g.name: g.width - 1 for g in groups}
    assert all(s.distance < 1e-12 for s in result.merge_log)
    slim = slim_model(model, result.state_dict).eval()
    x = torch.randn(8, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(slim(x), model.eval()(x), rtol=0, atol=1e-5)
    assert [m.out_channels for m in slim if isinstance(m, nn.Conv2d)] == [5, 7, 4]


def _one_group_net(width: int, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 3))
    sd = model.state_dict()
    return sd, build_groups(sd, chain_spaces(sd))


def test_beta_just_below_and_above_the_triggering_ratio():
    sd, groups = _one_group_net(12)
    d = naive_distance({k: v.double() for k, v in sd.items()}, groups[0].members, 12)
    off = ~torch.eye(12, dtype=torch.bool)
    ratio = d[off].min().item() / d[off].max().item()
    below = iterative_feature_merging(sd, groups, beta=ratio * (1 - 1e-9))
    above = iterative_feature_merging(sd, groups, beta=ratio * (1 + 1e-9))
    assert below.n_merges == 0 and below.widths == {groups[0].name: 12}
    assert above.n_merges >= 1 and above.merge_log[0].distance == pytest.approx(d[off].min().item())


def test_max_ratio_caps_outer_iterations_like_the_official_code():
    sd, groups = _one_group_net(64)
    capped = iterative_feature_merging(sd, groups, beta=0.999, max_ratio=0.1)
    assert capped.n_merges == 7  # ceil(64 * 0.1), as the official code (10.9 %)
    tiny = iterative_feature_merging(sd, groups, beta=0.999, max_ratio=1e-9)
    assert tiny.n_merges == 1  # iteration 0 < 64 * 1e-9: one visit, at most one merge
    layerwise = iterative_feature_merging(sd, groups, beta=0.999, max_ratio=0.1, order="layerwise")
    assert layerwise.n_merges == 7


def test_groups_of_width_one_and_two():
    sd, groups = _one_group_net(2)
    assert iterative_feature_merging(sd, groups, beta=0.99).n_merges == 0  # d_min == d_max, needs beta >= 1
    copy_channel(sd, groups[0], 0, 1)
    merged = iterative_feature_merging(sd, groups, beta=0.5)
    assert merged.widths == {groups[0].name: 1} and merged.n_merges == 1  # identical: ties merge
    again = iterative_feature_merging(merged.state_dict, build_groups(merged.state_dict, chain_spaces(merged.state_dict)),
                                      beta=0.99)
    assert again.n_merges == 0 and list(again.widths.values()) == [1]


def test_all_zero_and_duplicate_channels_merge_cleanly_with_row_major_ties():
    sd, groups = _one_group_net(8)
    for key, axis, _ in groups[0].members:
        w = sd[key]
        view = w.view(8, -1) if axis == 0 else w.view(w.shape[0], 8, -1)
        for dead in (2, 6):
            if axis == 0:
                view[dead] = 0
            else:
                view[:, dead] = 0
    copy_channel(sd, groups[0], 1, 5)
    result = iterative_feature_merging(sd, groups, beta=1e-6)
    # two exact ties at distance 0: (1, 5) comes before (2, 6) in row-major order
    assert [(s.i, s.j) for s in result.merge_log][:2] == [(1, 5), (1, 4)]
    assert result.merge_log[0].distance == 0.0 and result.widths[groups[0].name] == 6
    assert sorted(result.clusters[groups[0].name][-2:]) == [[1, 5], [2, 6]]


@pytest.mark.slow
def test_incremental_distances_equal_a_fresh_computation():
    arch, sd, groups = _weights_with_duplicates("ResNet18")
    merger = IterativeMerger(sd, groups)
    result = merger.run(beta=0.6)
    assert result.n_merges > 20
    fresh = IterativeMerger(result.state_dict, channel_groups(arch, result.state_dict))
    for gi in range(len(merger.states)):
        torch.testing.assert_close(merger.distances(gi), fresh.distances(gi), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["official", "layerwise"])
@pytest.mark.parametrize("pending_rank,candidates", [(256, 4), (8, 1), (40, 2)])
def test_candidates_and_pending_products_match_full_passes(order, pending_rank, candidates, monkeypatch):
    """Closest pairs from exact candidate distances, bounds and pending products (here also with tiny
    queues and few candidates, so that flushes and fresh passes happen mid-run) give the merge log of
    a full distance pass at every look, and of the naive algorithm."""
    arch, sd, groups = _weights_with_duplicates("VGG11")
    monkeypatch.setattr(GroupGram, "pending_rank", pending_rank)
    monkeypatch.setattr(GroupGram, "candidates_per_channel", candidates)
    merger = IterativeMerger(sd, groups)
    fast = merger.run(beta=0.3, order=order)
    looks = sum(st.n_merges for st in merger.states)
    scans = sum(st.gram.scans for st in merger.states)
    assert fast.n_merges > 50 and scans < looks / 2  # most looks used the candidates alone
    monkeypatch.setattr(GroupGram, "always_scan", True)
    full = iterative_feature_merging(sd, groups, beta=0.3, order=order)
    step = lambda s: (s.iteration, s.group, s.i, s.j)  # noqa: E731
    assert [step(s) for s in fast.merge_log] == [step(s) for s in full.merge_log]
    for s, t in zip(fast.merge_log, full.merge_log):
        assert s.distance == pytest.approx(t.distance, rel=1e-9, abs=1e-12)
    _, widths, log = naive_ifm(sd, [(g.name, g.width, g.members) for g in groups], 0.3, 1.0, order)
    assert [step(s) for s in fast.merge_log] == _naive_log(log) and fast.widths == widths


@pytest.mark.parametrize("beta", [0.2, 0.3])
def test_candidate_distances_and_bounds_hold_for_every_pair(beta, monkeypatch):
    """After a run (products pending, candidates aged by many merges), each group's bookkeeping still
    holds against its exact distances: candidates' distances are exact, every other pair is at least
    ``threshold - 2 (two largest moved)`` apart, and no pair is farther than ``max_bound``."""
    arch, sd, groups = _weights_with_duplicates("VGG11")
    monkeypatch.setattr(GroupGram, "pending_rank", 40)
    merger = IterativeMerger(sd, groups)
    assert merger.run(beta=beta).n_merges > 20
    checked = 0
    for st in merger.states:
        gram = st.gram
        w, n = gram.width, gram.n_pairs
        if w < 3 or n == 0:
            continue
        moved = np.sort(gram.moved[:w])[-2:].sum()
        threshold, max_bound = gram.threshold, gram.max_bound
        pairs = list(zip(gram.pairs.i[:n].tolist(), gram.pairs.j[:n].tolist()))
        stored = gram.pairs.d[:n].copy()
        exact = gram.distance_matrix()  # (adds the pending products to the parts: G is unchanged)
        scale = float(np.abs(exact).max())
        for (i, j), d in zip(pairs, stored):
            assert d == pytest.approx(exact[i, j], rel=1e-9, abs=1e-12 * scale)
        others = np.ones((w, w), bool)
        np.fill_diagonal(others, False)
        for i, j in pairs:
            others[i, j] = others[j, i] = False
        if others.any():  # (none when every pair is a candidate)
            assert exact[others].min() >= threshold - 2.0 * moved - 1e-9 * scale
        assert exact.max() <= max_bound + 1e-9 * scale
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("order", ["official", "layerwise"])
def test_more_tied_closest_pairs_than_candidates(order):
    """Channels at the corners of a 5-cube: 80 pairs tie at the smallest distance, more than a full
    pass keeps as candidates, so every pair is examined; ties still go in row-major official order."""
    sd, groups = _one_group_net(32)
    corners = torch.tensor([[(c >> bit) & 1 for bit in range(5)] for c in range(32)], dtype=torch.float32)
    sd["0.weight"], sd["2.weight"] = corners + 1.0, torch.zeros_like(sd["2.weight"])
    merger = IterativeMerger(sd, groups)
    result = merger.run(beta=0.5, order=order)
    assert merger.states[0].gram.threshold == float("inf")  # all pairs became candidates
    _, widths, log = naive_ifm(sd, [(g.name, g.width, g.members) for g in groups], 0.5, 1.0, order)
    assert result.merge_log[0].distance == 1.0 and (result.merge_log[0].i, result.merge_log[0].j) == (0, 1)
    assert [(s.iteration, s.group, s.i, s.j) for s in result.merge_log] == _naive_log(log)
    assert result.widths == widths and result.n_merges > 3


def test_gram_matrix_by_halves():
    m = torch.randn(900, 37, dtype=torch.float64)
    g = gram_matrix(m)
    torch.testing.assert_close(g, m @ m.T, rtol=1e-12, atol=1e-12)
    assert torch.equal(g[:450, 450:], g[450:, :450].T)  # the off-diagonal block is computed once


def test_float32_option_and_input_not_modified():
    arch, sd, groups = _weights_with_duplicates("VGG11")
    before = copy.deepcopy(sd)
    r64 = iterative_feature_merging(sd, groups, beta=0.3)
    r32 = iterative_feature_merging(sd, groups, beta=0.3, dtype=torch.float32)
    assert r64.widths == r32.widths and r64.n_merges > 0
    assert [(s.iteration, s.group, s.i, s.j) for s in r64.merge_log] == \
        [(s.iteration, s.group, s.i, s.j) for s in r32.merge_log]  # same merges in the same order
    assert [s.distance for s in r32.merge_log] == pytest.approx([s.distance for s in r64.merge_log], rel=1e-4,
                                                                abs=1e-6)
    assert all(torch.equal(before[k], sd[k]) for k in sd)


@pytest.mark.parametrize("beta,max_ratio", [(0.0, 1.0), (1.0, 1.0), (-0.1, 1.0), (0.1, 0.0), (0.1, 1.5)])
def test_bad_hyperparameters_raise(beta, max_ratio):
    sd, groups = _one_group_net(4)
    with pytest.raises(ValueError, match="beta|max_ratio"):
        iterative_feature_merging(sd, groups, beta=beta, max_ratio=max_ratio)


def test_a_merger_runs_once():
    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    merger = IterativeMerger(sd, channel_groups("VGG11", sd))
    merger.run(beta=0.5)
    with pytest.raises(RuntimeError, match="has run already"):
        merger.run(beta=0.5)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_weights_are_an_input_error(bad):
    from ifm.errors import IFMError
    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    sd["features.4.weight"][3, 0, 0, 0] = bad
    with pytest.raises(IFMError, match="features.4.weight holds non-finite values"):
        iterative_feature_merging(sd, channel_groups("VGG11", sd), beta=0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_merge_like_their_float32_copy(dtype):
    torch.manual_seed(0)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in
          models.create_model("VGG11", width=0.125).state_dict().items()}
    as_float = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    groups = channel_groups("VGG11", sd)
    half = iterative_feature_merging(sd, groups, beta=0.85)
    full = iterative_feature_merging(as_float, groups, beta=0.85)
    assert half.merge_log == full.merge_log and half.n_merges > 0
    assert all(v.dtype == sd[k].dtype for k, v in half.state_dict.items())


def test_distance_matrices_match_the_naive_distances():
    from ifm import distance_matrices
    torch.manual_seed(0)
    sd = models.create_model("VGG11", width=0.125).state_dict()
    groups = channel_groups("VGG11", sd)
    matrices = distance_matrices(sd, groups, [2])
    direct = naive_distance({k: v.double() for k, v in sd.items()}, groups[2].members, groups[2].width)
    torch.testing.assert_close(matrices[groups[2].name], direct, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_degenerate_weights_tie_everywhere_and_still_follow_the_official_order(fill):
    """All-zero or constant weights tie every pair of every group (the case that took 74 minutes on a VGG11 before
    tie-breaking was vectorised); the merge order must still be the naive official one."""
    sd = models.create_model("VGG11", width=0.125).state_dict()
    for value in sd.values():
        if value.ndim > 1:
            value.fill_(fill)
    groups = channel_groups("VGG11", sd)
    result = iterative_feature_merging(sd, groups, beta=0.1, max_ratio=0.9)
    _, widths, log = naive_ifm(sd, [(g.name, g.width, g.members) for g in groups], 0.1, 0.9, "official")
    assert result.n_merges == len(log) > 100
    assert [(s.iteration, s.group, s.i, s.j) for s in result.merge_log] == _naive_log(log)
    assert result.widths == widths


@pytest.mark.slow
@pytest.mark.parametrize("pending_rank", [128, 8])
@pytest.mark.parametrize("case", marked_slow(["VGG11", "ResNet18", "tv_resnet18"], lambda case: case.startswith("tv_")))
def test_mean_rule_matches_the_naive_algorithm(case, pending_rank, monkeypatch):
    """The dual rule (rows and 1-D parameters count-weighted, columns summed): the incremental distances stay exact
    (same merge log as recomputing every distance from the weights) and the weights equal the naive ones."""
    monkeypatch.setattr(GroupGram, "pending_rank", pending_rank)
    arch, sd, groups = _weights_with_duplicates(case)
    beta, max_ratio = CASES[case][3][0]
    result = iterative_feature_merging(sd, groups, beta=beta, max_ratio=max_ratio, rule="mean")
    params, widths, log = naive_ifm(sd, [(g.name, g.width, g.members) for g in groups], beta, max_ratio,
                                    rule="mean")
    official = iterative_feature_merging(sd, groups, beta=beta, max_ratio=max_ratio)
    assert result.n_merges > 0 and any(not torch.equal(v, official.state_dict[k])  # the rules do differ here
                                       for k, v in result.state_dict.items())
    assert [(s.iteration, s.group, s.i, s.j) for s in result.merge_log] == _naive_log(log)
    assert result.widths == widths
    for key, value in params.items():
        torch.testing.assert_close(result.state_dict[key].double(), value, rtol=1e-6, atol=1e-6)
