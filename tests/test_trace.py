"""Channel groups traced from the model's graph: equal to the hand descriptions on the paper architectures, safe
(frozen, with a reason) wherever the rule table does not know an op, and usable on any CNN end to end."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from ifm import (IFMError, build_groups, chain_spaces, channel_groups, iterative_feature_merging, resnet_spaces,
                 slim_model)
from ifm.architectures import ARCHITECTURES, get_architecture
from ifm.discovery import check_groups
from ifm.experiments.planted import copy_channel
from ifm.trace import trace_spaces, traced_layer_spaces
from tests.helpers import marked_slow

ROOT = Path(__file__).resolve().parents[1]


def _hand_groups(name, sd, stages):
    spaces = resnet_spaces(sd, stages) if get_architecture(name).is_resnet else chain_spaces(sd)
    return build_groups(sd, spaces)


def _state_dict(name):
    arch = get_architecture(name)
    return (models.create_model(name, width=0.125) if arch.dataset == "cifar10" else arch.build(10)).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if not n.startswith(("vgg13", "vgg16", "vgg19"))])
def test_traced_groups_equal_the_hand_descriptions(name):
    """Members, their order and the group names: so every default result stays identical."""
    sd = _state_dict(name)
    resnet = get_architecture(name).is_resnet
    for stages in ([(3, 4), (2,), (1, 2, 3, 4)] if resnet else [None]):
        traced = channel_groups(name, sd, stages)
        hand = _hand_groups(name, sd, stages or (3, 4))
        if resnet and 1 in stages and name in ("ResNet50", "resnet50"):
            # layer1.0 has a projection: the hand map leaves the stem out of stage 1, the traced one merges it
            stem = traced.pop(0)
            assert stem.name == "conv1" and stem.members[:2] == [("conv1.weight", 0, 1), ("bn1.weight", 0, 1)]
            assert ("layer1.0.conv1.weight", 1, 1) in stem.members
        assert [(g.name, g.width, g.members) for g in traced] == [(g.name, g.width, g.members) for g in hand]


class _Roll(nn.Module):
    """Channel-mixing ops the rule table must not take for channel-wise ones."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.op == "roll":
            h = torch.roll(h, 1, dims=1)
        elif self.op == "shuffle":
            h = h.view(1, 2, 4, *h.shape[2:]).transpose(1, 2).reshape(h.shape)
        elif self.op == "scale":
            h = h * 0.5 + 1.0  # channel-wise: still merged
        elif self.op == "silu":
            h = nn.functional.silu(h)
        return self.head(self.b(h).mean((2, 3)))


@pytest.mark.parametrize("op,frozen", [("roll", "roll"), ("shuffle", "view"), ("scale", None), ("silu", "silu")])
def test_unknown_channel_ops_freeze_the_spaces_they_touch(op, frozen):
    model = _Roll(op)
    graph = trace_spaces(model, (3, 8, 8))
    groups = build_groups(model.state_dict(), traced_layer_spaces(graph))
    assert [g.name for g in groups] == (["b"] if frozen else ["a", "b"])  # the head's outputs are never merged
    reasons = [graph.frozen_reason(s.id) for s in graph.spaces if s.producer == "a"]
    assert (reasons == [None]) if frozen is None else frozen in reasons[0]


TORCHVISION = {  # model -> (input size, words of a frozen reason it must give, at least this many groups)
    "mobilenet_v3_small": (64, "the model's output", 25),  # depthwise convs and gates merge (mean rule)
    "efficientnet_b0": (64, "the model's output", 35),
    "densenet121": (64, "the model's output", 100),
    "regnet_y_400mf": (64, "grouped conv", 15),
    "resnext50_32x4d": (64, "grouped conv", 5),
    "convnext_tiny": (64, "layer_norm", 18),  # channels-last blocks: the MLP's inner space merges
    "shufflenet_v2_x0_5": (64, "view", 1),
    "wide_resnet50_2": (64, "the model's output", 30),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", marked_slow(TORCHVISION, lambda name: name.startswith(("wide", "convnext", "resnext"))))
def test_torchvision_cnns_trace_and_their_groups_keep_the_function(name):
    size, words, at_least = TORCHVISION[name]
    torch.manual_seed(0)
    arch = get_architecture(name, (3, size, size))
    sd = arch.build(10).state_dict()
    graph = arch.trace(sd)
    rule = "mean" if graph.activations else "official"  # what "auto" picks
    groups = build_groups(sd, arch.spaces(sd, graph=graph, rule=rule))
    assert len(groups) >= at_least
    assert any(words in (graph.frozen_reason(s.id, rule) or "") for s in graph.spaces)
    assert check_groups(arch, sd, groups) < 1e-9  # a random permutation of every group keeps the output


@pytest.mark.slow
def test_a_wrong_group_is_caught_by_the_permutation_check():
    arch = get_architecture("resnet18", (3, 32, 32))
    sd = arch.build(10).state_dict()
    groups = channel_groups(arch, sd, (1, 2, 3, 4))
    groups[0].members.pop()  # forget one member of the stem's stream
    with pytest.raises(IFMError, match="changes its output"):
        check_groups(arch, sd, groups)


class _Residual(nn.Module):
    """A BN-free residual CNN (ReLU): duplicates merged by the official rule keep its function exactly."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(12, 10, 3, padding=1), nn.Conv2d(10, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(12 * 4, 9), nn.Linear(9, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        s = torch.relu(s + self.c2(torch.relu(self.c1(s))))
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(s, 2), 1)
        return self.fc2(torch.relu(self.fc1(h)))


def test_any_module_its_exact_duplicates_merge_and_the_function_stays():
    torch.manual_seed(0)
    model = _Residual().double().eval()
    groups = channel_groups(model, input_size=(3, 8, 8))
    assert [(g.name, g.width) for g in groups] == [("stem", 12), ("c1", 10), ("fc1", 9)]
    assert ("c2.weight", 0, 1) in groups[0].members and ("fc1.weight", 1, 4) in groups[0].members  # stream + flatten
    sd = model.state_dict()
    for group, (src, dst) in zip(groups, [(0, 5), (2, 7), (1, 4)]):
        copy_channel(sd, group, src, dst, split_columns=True)  # an exact duplicate; the function is unchanged
    model.load_state_dict(sd)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    result = iterative_feature_merging(sd, groups, beta=1e-6)
    assert result.n_merges == 3 and result.widths == {"stem": 11, "c1": 9, "fc1": 8}
    slim = get_architecture("tests.test_trace:_Residual").build(5)
    from ifm.slim import slim_model
    merged = slim_model(slim.double(), result.state_dict).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-9, atol=1e-9)


def _run(*argv):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "self_merge.py"), *argv], capture_output=True,
                          text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=300)


@pytest.mark.slow
def test_the_any_cnn_script_lists_groups_and_merges_a_model_of_yours(tmp_path):
    torch.manual_seed(0)
    torch.save(_Residual().state_dict(), tmp_path / "mine.pt")
    common = ["--arch", "tests.test_trace:_Residual", "--input_size", "3", "8", "8", "--model_param",
              str(tmp_path / "mine.pt")]
    listed = _run(*common, "--list_groups")
    assert listed.returncode == 0, listed.stderr
    assert "3 channel groups" in listed.stdout and "stem  width 12" in listed.stdout
    assert "the model's output" in listed.stdout and "the model's input" not in listed.stdout
    merged = _run(*common, "--threshold", "0.5", "--no_eval", "--no_progress", "--results",
                  str(tmp_path / "r.jsonl"), "--save_merged", str(tmp_path / "m.pt"))
    assert merged.returncode == 0, merged.stderr
    assert "merges:" in merged.stdout and (tmp_path / "m.pt").exists()
    bad = _run("--arch", "no_such_model", "--no_eval", "--model_param", str(tmp_path / "mine.pt"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown architecture 'no_such_model'")


DUPLICATES = {  # torchvision model -> (the rule "auto" picks, the rules tested), BN folded
    "mobilenet_v2": ("mean", ("mean",)),
    "mobilenet_v3_small": ("mean", ("mean", "official")),  # official: its ReLU blocks (depthwise, gate) merge
    "mnasnet0_5": ("official", ("official",)),  # ReLU and depthwise convs: kernels averaged by the official rule
    "efficientnet_b0": ("mean", ("mean",)), "regnet_y_400mf": ("official", ("official",)),
    "resnext50_32x4d": ("official", ("official",)),  # (wide_resnet50_2, the same graph 2x wider: only traced above)
    "googlenet": ("official", ("official",)),  # concatenations read by convs
    "densenet121": ("official", ("official",)),  # pre-activation BNs over concatenations: folded to affine
    "convnext_tiny": ("mean", ("mean",)),  # linears over the channels-last dim, GELU
    "timm/resnet50d": ("official", ("official",)), "timm/mobilenetv3_large_100": ("mean", ("mean", "official")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name,rule", [(n, r) for n, (_, rules) in DUPLICATES.items() for r in rules])
def test_injected_exact_duplicates_merge_and_the_function_stays(name, rule, tmp_path):
    """In every traced group a channel is made an exact copy of another (consumer columns split, so the function is
    that of the copied model); with BN folded (producers and eps from the graph), at a tiny β exactly those pairs
    merge under ``rule``, and the slim merged model computes the same function."""
    from ifm.architectures import model_for_state_dict
    from ifm.batchnorm import without_bn_statistics
    from ifm.experiments.run import RunSpec
    from ifm.experiments.loading import load_model
    from ifm.experiments.selfmerge import merge_weights
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    arch = get_architecture(name, (3, 64, 64))
    model = arch.build(10).double().eval()
    sd = model.state_dict()
    spec = RunSpec(arch=name, model_param=str(tmp_path / "m.pt"), merge_rule="auto", input_size=(3, 64, 64))
    torch.save(sd, tmp_path / "m.pt")
    assert load_model(spec).merge_rule == DUPLICATES[name][0]
    groups = channel_groups(arch, sd, rule=rule)
    kept = without_bn_statistics(groups, arch.trace(sd).batch_norms)
    injected = [g for g in groups if g.width >= 4 and g.name in {k.name for k in kept}]
    for group in injected:
        copy_channel(sd, group, 1, group.width - 2, split_columns=True)
    model.load_state_dict(sd)
    torch.save(sd, tmp_path / "m.pt")
    loaded = load_model(spec)
    result = merge_weights(loaded, 1e-9, bn_mode="fold", rule=rule)
    assert result.n_merges == len(injected) > 0
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    merged = model_for_state_dict(arch, result.state_dict).double().eval()
    with torch.no_grad():
        expected = model(x)
        assert (merged(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
    coarse = merge_weights(loaded, 0.3, rule=rule)
    with torch.no_grad():
        assert model_for_state_dict(arch, coarse.state_dict).double().eval()(x).shape == expected.shape


def test_the_ifm_command_is_the_any_cnn_entry_point(capsys):
    import importlib
    import tomllib
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["ifm"]
    module, _, name = target.partition(":")
    main = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--list_groups" in capsys.readouterr().out


class _GatedDepthwise(nn.Module):
    """A ReLU block with a depthwise conv and a squeeze-and-excitation gate (sigmoid): under the official rule the
    depthwise kernels and the gate's producer are averaged (every other parameter as the rule says)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.fc1, self.fc2 = nn.Conv2d(12, 6, 1), nn.Conv2d(6, 12, 1)
        self.proj = nn.Conv2d(12, 10, 3, padding=1)
        self.head = nn.Linear(10, 5)

    def gated(self, x):
        """The depthwise block's output and its gate."""
        h = torch.relu(self.dw(torch.relu(self.stem(x))))
        return h, torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))

    def forward(self, x):
        h, gate = self.gated(x)
        return self.head(torch.relu(self.proj(h * gate)).mean((2, 3)))


def test_depthwise_kernels_and_gates_are_averaged_members_under_both_rules():
    graph = trace_spaces(_GatedDepthwise(), (3, 8, 8))
    assert graph.activations == []  # the gate's sigmoid does not ask for the mean rule
    sd = _GatedDepthwise().state_dict()
    for rule in ("official", "mean"):
        groups = build_groups(sd, traced_layer_spaces(graph, rule=rule))
        assert [(g.name, g.width) for g in groups] == [("stem", 12), ("fc1", 6), ("proj", 10)]
        assert groups[0].averaged == {"dw.weight", "fc2.weight", "fc2.bias"}  # (dw.bias follows the stem's rows)
        assert ("fc2.weight", 0, 1) in groups[0].members and ("fc2.weight", 1, 1) in groups[1].members
    squared = trace_spaces(_Squared(), (3, 8, 8))
    assert [g.name for g in build_groups(_Squared().state_dict(), traced_layer_spaces(squared))] == []
    assert "products of activations" in squared.activations


class _Squared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 6, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.head((torch.relu(self.a(x)) * torch.relu(self.b(x))).mean((2, 3)))


@pytest.mark.parametrize("rule", ["official", "mean"])
@pytest.mark.parametrize("pending_rank", [128, 4, 2])
def test_averaged_members_keep_the_distances_exact(rule, pending_rank, monkeypatch):
    """Merging near-duplicates of a depthwise + gate block: the incremental distances (with the gate's rows averaged
    in a neighbour's count-weighted part) give the naive algorithm's merge log and weights."""
    from ifm.gram import GroupGram
    from ifm.naive import naive_ifm
    monkeypatch.setattr(GroupGram, "pending_rank", pending_rank)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = _GatedDepthwise().double()
    groups = channel_groups(model, input_size=(3, 8, 8), rule=rule)
    sd = model.state_dict()
    for group in groups:
        for k in range(group.width // 3):
            copy_channel(sd, group, k, group.width - 1 - k, noise=0.05 * (k + 1), generator=gen)
    result = iterative_feature_merging(sd, groups, beta=0.6, rule=rule)
    params, widths, log = naive_ifm(sd, [(g.name, g.width, g.members, g.averaged) for g in groups], 0.6, rule=rule)
    assert result.n_merges >= 8 and result.widths == widths
    assert [(s.iteration, s.group, s.i, s.j) for s in result.merge_log] == [
        (it, name, min(i, j), max(i, j)) for it, name, i, j in log]
    for key, value in params.items():
        torch.testing.assert_close(result.state_dict[key], value, rtol=1e-9, atol=1e-9)


def test_exact_duplicates_through_a_depthwise_conv_and_a_gate_merge_under_the_official_rule():
    torch.manual_seed(0)
    model = _GatedDepthwise().double().eval()
    groups = channel_groups(model, input_size=(3, 8, 8))
    sd = model.state_dict()
    for group in groups:
        copy_channel(sd, group, 1, group.width - 2, split_columns=True)
    model.load_state_dict(sd)
    result = iterative_feature_merging(sd, groups, beta=1e-9)
    assert result.n_merges == 3
    from ifm.slim import slim_model
    merged = slim_model(_GatedDepthwise().double(), result.state_dict).eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-9, atol=1e-9)


class _ReadGate(_GatedDepthwise):
    """The gate's value is also read by a layer: under the official rule (gate averaged, readers' columns averaged)
    that would change the function, so the gated space is frozen there; the mean rule merges it."""

    def __init__(self):
        super().__init__()
        self.side = nn.Linear(12, 5)

    def forward(self, x):
        h, gate = self.gated(x)
        return self.head(torch.relu(self.proj(h * gate)).mean((2, 3))) + self.side(gate.flatten(1))


def test_a_gate_read_by_a_layer_is_frozen_under_the_official_rule():
    graph = trace_spaces(_ReadGate(), (3, 8, 8))
    sd = _ReadGate().state_dict()
    official = [g.name for g in build_groups(sd, traced_layer_spaces(graph, rule="official"))]
    assert "stem" not in official and "fc1" in official
    assert any("side reads a gate" in (graph.frozen_reason(s.id) or "") for s in graph.spaces)
    assert "stem" in [g.name for g in build_groups(sd, traced_layer_spaces(graph, rule="mean"))]


class _GateFirst(_GatedDepthwise):
    """``gate * h`` (the gate as the first factor), then SiLU: the product carries the gated activation on, so the
    SiLU after it freezes the space under the official rule."""

    def forward(self, x):
        h, gate = self.gated(x)
        return self.head(torch.relu(self.proj(nn.functional.silu(gate * h))).mean((2, 3)))


def test_the_product_of_a_gate_carries_the_gated_activation_on():
    graph = trace_spaces(_GateFirst(), (3, 8, 8))
    groups = build_groups(_GateFirst().state_dict(), traced_layer_spaces(graph, rule="official"))
    assert "stem" not in [g.name for g in groups] and graph.activations == ["silu"]
    with_relu = trace_spaces(_GatedDepthwise(), (3, 8, 8))
    assert not with_relu.frozen_reason(next(s.id for s in with_relu.spaces if s.producer == "stem"))


class _NormThenDepthwise(nn.Module):
    """conv → torchvision's LayerNorm2d (permute, layer_norm over channels, permute back) → depthwise conv → BN →
    ReLU → 1×1 conv → linear."""

    def __init__(self):
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d
        self.conv, self.norm = nn.Conv2d(3, 16, 3, padding=1), LayerNorm2d(16)
        self.dw, self.bn = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.pw, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.dw(self.norm(self.conv(x)))))
        return self.fc(self.pw(x).mean((2, 3)))


def test_a_depthwise_conv_after_a_channels_last_layer_norm_is_no_dense_conv():
    torch.manual_seed(0)
    model = _NormThenDepthwise().eval()
    groups = channel_groups(model, input_size=(3, 20, 24))
    assert [g.name for g in groups] == ["pw"]  # the layer norm mixes the channels the depthwise conv filters
    result = iterative_feature_merging(model.state_dict(), groups, beta=0.9, max_ratio=0.3)
    slim = slim_model(model, result.state_dict)
    assert result.widths["pw"] < 8 and slim(torch.randn(2, 3, 20, 24)).shape == (2, 10)
    assert check_groups(model, None, groups, input_size=(3, 20, 24)) <= 1e-9  # the library's permutation check
