"""Results do not depend on the memory layout of the inputs: a channels-last or strided copy of a state dict merges
bit-identically to the contiguous one (every rule, BN mode, correction, a budget, k-means), and checkpoints are
written and read in the standard layout."""
from __future__ import annotations

import itertools

import pytest
import torch

import models
from ifm import channel_groups, model_for_state_dict, standard_layout
from ifm.architectures import get_architecture
from ifm.experiments.io import load_state_dict_file, save_state_dict
from ifm.experiments.run import RunSpec
from ifm.experiments.loading import LoadedModel
from ifm.experiments.selfmerge import merge_weights, resolve_budget
from ifm.experiments.planted import copy_channel
from ifm.layout import is_standard_layout
from tests.helpers import randomize_bn

RULES, BN_MODES, CORRECTIONS = ("official", "mean"), ("official", "fold"), ("none", "rows", "weights")


def channels_last(state_dict: dict) -> dict:
    """4-D tensors stored channels-last (as a model trained with ``channels_last`` saves them)."""
    return {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in state_dict.items()}


def strided(state_dict: dict) -> dict:
    """Every tensor a non-contiguous view: ≥2-D ones stored column-major (all axes reversed in memory), 1-D ones
    every other entry of a buffer twice as long."""
    out = {}
    for key, value in state_dict.items():
        if value.ndim >= 2:
            axes = tuple(reversed(range(value.ndim)))
            out[key] = value.permute(axes).contiguous().permute(axes)
        elif value.ndim == 1:
            buffer = torch.zeros(2 * len(value), dtype=value.dtype)
            buffer[::2] = value
            out[key] = buffer[::2]
        else:
            out[key] = value
    assert all(not v.is_contiguous() for v in out.values() if v.numel() > 1)
    return out


LAYOUTS = {"channels_last": channels_last, "strided": strided}


def _planted(arch: str, model: torch.nn.Module, seed: int = 0) -> dict:
    """``model``'s weights with noisy copies of a quarter of each group's channels and non-trivial BN, so that
    every group merges and BN statistics matter."""
    gen = torch.Generator().manual_seed(seed)
    sd = randomize_bn(model.state_dict(), gen)
    for group in channel_groups(arch, sd):
        keep = max(1, group.width // 4)
        for dst in range(keep, group.width):
            copy_channel(sd, group, dst % keep, dst, noise=0.05, generator=gen)
    return sd


def _loaded(arch_name: str, state_dict: dict, model: torch.nn.Module | None = None) -> LoadedModel:
    arch = get_architecture(arch_name)
    return LoadedModel(arch, state_dict, arch_name, arch_name, None,
                       model if model is not None else model_for_state_dict(arch, state_dict),
                       graph=arch.trace(state_dict))


def _assert_same(reference, other) -> None:
    def steps(result):  # (repr: the k-means log's distances are NaN)
        return [(s.iteration, s.group, s.i, s.j, repr(s.distance)) for s in result.merge_log]
    assert steps(other) == steps(reference)
    assert other.state_dict.keys() == reference.state_dict.keys()
    for key, value in reference.state_dict.items():
        assert torch.equal(other.state_dict[key], value), key


def _cifar(name: str, stages=None):
    torch.manual_seed(0)
    model = models.create_model(name, width=0.125)
    return _loaded(name, _planted(name, model), model), stages


@pytest.mark.slow
@pytest.mark.parametrize("name,stages,layout", [("VGG11", None, "channels_last"), ("VGG11", None, "strided"),
                                               ("ResNet18", (1, 2, 3, 4), "channels_last")])
def test_every_option_merges_the_same_whatever_the_layout(name, stages, layout):
    loaded, stages = _cifar(name, stages)
    moved = _loaded(name, LAYOUTS[layout](loaded.state_dict), loaded.model)
    for rule, bn_mode, correction in itertools.product(RULES, BN_MODES, CORRECTIONS):
        options = dict(max_ratio=0.5, stages=stages, rule=rule, bn_mode=bn_mode, bn_correction=correction)
        reference = merge_weights(loaded, 0.4, **options)
        assert reference.n_merges > 0
        _assert_same(reference, merge_weights(moved, 0.4, **options))
    for rule in RULES:  # k-means clusters (Model Folding), merged by either rule
        options = dict(max_ratio=0.5, stages=stages, rule=rule, clustering="kmeans")
        _assert_same(merge_weights(loaded, 0.5, **options), merge_weights(moved, 0.5, **options))


@pytest.mark.slow
@pytest.mark.parametrize("allocation", ["ifm", "uniform"])
def test_a_budget_resolves_and_merges_the_same_whatever_the_layout(allocation):
    loaded, _ = _cifar("VGG11")
    spec = RunSpec(arch="VGG11", target_params=40.0, allocation=allocation)
    found = []
    for state_dict in (loaded.state_dict, channels_last(loaded.state_dict), strided(loaded.state_dict)):
        current = _loaded("VGG11", state_dict, loaded.model)
        resolved, _ = resolve_budget(current, spec, torch.device("cpu"))
        result = merge_weights(current, resolved.beta, max_ratio=resolved.max_ratio,
                               max_merges=resolved.max_merges)
        found.append((resolved, result))
    (spec0, reference), *others = found
    for resolved, result in others:
        assert (resolved.beta, resolved.max_ratio, resolved.max_merges) == \
            (spec0.beta, spec0.max_ratio, spec0.max_merges)
        _assert_same(reference, result)


TRACED = {  # torchvision models traced from their graph: depthwise convs and gates, a concatenation, depthwise + ReLU
    "mobilenet_v3_small": [("mean", "fold", "weights"), ("official", "official", "rows")],
    "squeezenet1_1": [("official", "official", "none"), ("mean", "fold", "weights")],
    "mnasnet0_5": [("official", "official", "weights")],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRACED))
def test_traced_torchvision_models_merge_the_same_whatever_the_layout(name):
    torch.manual_seed(0)
    arch = get_architecture(name)
    model = arch.build(10)
    loaded = _loaded(name, _planted(name, model), model)
    for layout, (rule, bn_mode, correction) in itertools.product(LAYOUTS.values(), TRACED[name]):
        options = dict(max_ratio=0.05, rule=rule, bn_mode=bn_mode, bn_correction=correction)
        reference = merge_weights(loaded, 0.5, **options)
        assert reference.n_merges > 0
        _assert_same(reference, merge_weights(_loaded(name, layout(loaded.state_dict), model), 0.5, **options))


def test_an_in_place_view_never_copies():
    import numpy as np
    from ifm.merge import in_place_view
    contiguous = np.arange(24.0).reshape(2, 3, 4)
    view = in_place_view(contiguous, 2, 12)
    view[1, 0] = -1.0
    assert contiguous[1, 0, 0] == -1.0
    with pytest.raises((AttributeError,)):  # NumPy's reshape would copy here (and lose the writes)
        in_place_view(np.asfortranarray(contiguous), 2, 12)


def test_checkpoints_are_written_and_read_in_the_standard_layout(tmp_path):
    model = models.create_model("VGG11", width=0.125).to(memory_format=torch.channels_last)
    state = model.state_dict()
    assert not is_standard_layout(state)
    torch.save(state, tmp_path / "theirs.pt")  # a checkpoint somebody saved from a channels-last model
    loaded = load_state_dict_file(tmp_path / "theirs.pt")
    assert is_standard_layout(loaded) and all(torch.equal(loaded[k], v) for k, v in state.items())
    save_state_dict(strided(state), tmp_path / "ours.pt")
    raw = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert is_standard_layout(raw) and all(torch.equal(raw[k], v) for k, v in state.items())
    assert is_standard_layout(standard_layout(channels_last(state)))


def test_a_small_chain_merges_the_same_from_any_layout():
    """The quick loop's guard: a tiny conv chain whose first conv (rows only, no neighbour) the old code left
    unmerged when stored channels-last."""
    from ifm import build_groups, chain_spaces, iterative_feature_merging
    from tests.helpers import plain_cnn
    torch.manual_seed(0)
    sd = plain_cnn(widths=(6, 8, 5)).state_dict()
    groups = build_groups(sd, chain_spaces(sd))
    reference = iterative_feature_merging(sd, groups, beta=0.9, device="cpu")
    assert reference.n_merges > 0
    for layout in LAYOUTS.values():
        _assert_same(reference, iterative_feature_merging(layout(sd), groups, beta=0.9, device="cpu"))
