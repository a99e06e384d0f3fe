"""Channel groups: official order and sizes, and permutation invariance for every architecture."""
import pytest
import torch

import models
from ifm import ARCHITECTURES, channel_groups, chain_spaces, build_groups, get_architecture, permute_channels
from ifm.errors import IFMError
from tests.helpers import marked_slow, plain_cnn, randomize_bn


def test_vgg11_groups_match_official_layout():
    sd = models.create_model("VGG11").state_dict()
    groups = channel_groups("VGG11", sd)
    assert [g.width for g in groups] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert groups[0].name == "perm_features.0"
    assert [m[:2] for m in groups[0].members] == [
        ("features.0.weight", 0), ("features.0.bias", 0), ("features.1.weight", 0), ("features.1.bias", 0),
        ("features.1.running_mean", 0), ("features.1.running_var", 0), ("features.4.weight", 1)]
    assert groups[-1].members[-1] == ("classifier.weight", 1, 1)
    assert [len(channel_groups(n, models.create_model(n).state_dict())) for n in ["VGG13", "VGG16", "VGG19"]] \
        == [10, 13, 16]


@pytest.mark.slow
def test_resnet_groups_official_order_and_sizes():
    sd18 = models.create_model("ResNet18").state_dict()
    groups = channel_groups("ResNet18", sd18)
    assert [g.name for g in groups] == ["layer3.0.relu1", "layer3.0.relu2", "layer3.1.relu1",
                                        "layer4.0.relu1", "layer4.0.relu2", "layer4.1.relu1"]
    assert [g.width for g in groups] == [256, 256, 256, 512, 512, 512]
    res4 = groups[4]
    dim = sum(sd18[k].reshape(512, -1).shape[1] if a == 0 else sd18[k].numel() // 512
              for k, a, _ in res4.distance_members(sd18))
    assert dim == 4608 + 256 + 4608 + 4608 + 10
    assert ("layer4.0.shortcut.0.weight", 0, 1) in res4.members
    assert ("layer4.0.shortcut.0.weight", 1, 1) in groups[1].members  # consumer of the stage-3 stream
    assert not any("layer3.0.conv1.weight" == k and a == 1 for g in groups for k, a, _ in g.members)
    assert len(channel_groups("ResNet34", models.create_model("ResNet34").state_dict())) == 11
    g50 = channel_groups("ResNet50", models.create_model("ResNet50").state_dict())
    assert len(g50) == 20
    assert sorted({g.width for g in g50 if g.name.endswith("relu3")}) == [1024, 2048]


@pytest.mark.slow
def test_torchvision_key_names_and_flattened_classifier():
    import torchvision
    sd = torchvision.models.resnet18(weights=None).state_dict()
    groups = channel_groups("resnet18", sd)
    assert ("layer4.0.downsample.0.weight", 0, 1) in groups[4].members and ("fc.weight", 1, 1) in groups[4].members
    vgg = torchvision.models.vgg11(weights=None).state_dict()
    vg = channel_groups("vgg11", vgg)
    assert [g.name for g in vg[-3:]] == ["perm_features.18", "perm_classifier.0", "perm_classifier.3"]
    assert vg[-3].width == 512 and ("classifier.0.weight", 1, 49) in vg[-3].members  # 49 inputs per channel
    assert vg[-1].width == 4096 and ("classifier.6.weight", 1, 1) in vg[-1].members


def test_stages_option_and_errors():
    sd = models.create_model("ResNet18").state_dict()
    names = [g.name for g in channel_groups("ResNet18", sd, stages=[1, 4])]
    assert names[0] == "layer1.0.relu2" and "layer3.0.relu1" not in names
    assert ("conv1.weight", 0, 1) in channel_groups("ResNet18", sd, stages=[1])[0].members  # stem feeds stage 1
    with pytest.raises(IFMError):
        channel_groups("VGG11", models.create_model("VGG11").state_dict(), stages=[3])
    with pytest.raises(IFMError):
        get_architecture("VGG12")
    for bad in ([5], [0], [], [3, 7]):
        with pytest.raises(IFMError, match="ResNet stages are 1, 2, 3 and 4"):
            channel_groups("ResNet18", sd, stages=bad)


def _small_state_dict(name):
    arch = get_architecture(name)
    if arch.dataset == "cifar10":
        model = models.create_model(name, width=0.125)
    else:
        model = arch.build(10)
    return model, arch


@pytest.mark.parametrize("name", marked_slow([n for n in ARCHITECTURES if not n.startswith(("vgg13", "vgg16", "vgg19"))],
                                             lambda name: name.startswith(("vgg11", "resnet", "ResNet50"))))
def test_permuting_every_group_preserves_outputs(name):
    torch.manual_seed(0)
    model, arch = _small_state_dict(name)
    sd = randomize_bn(model.state_dict(), torch.Generator().manual_seed(1))
    model.load_state_dict(sd)
    model.eval()
    stages = [1, 2, 3, 4] if arch.is_resnet else None
    groups = channel_groups(name, sd, stages=stages)
    perms = {g.name: torch.randperm(g.width) for g in groups}
    permuted_sd = permute_channels(sd, groups, perms)
    assert any(not torch.equal(permuted_sd[k], v) for k, v in sd.items())  # the weights did move
    other = __import__("copy").deepcopy(model)
    other.load_state_dict(permuted_sd)
    size = 32 if arch.dataset == "cifar10" else 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(other(x), reference, rtol=1e-4, atol=1e-4)
        same = (other(x) - reference).abs().max()
        # negative control: leaving the producing rows of the last group unpermuted changes the function
        key = groups[-1].members[0].key
        broken = dict(permuted_sd)
        broken[key] = sd[key]
        other.load_state_dict(broken)
        assert (other(x) - reference).abs().max() > 10 * max(same, 1e-6)


def test_chain_spaces_work_for_a_custom_model():
    model = plain_cnn()
    groups = build_groups(model.state_dict(), chain_spaces(model.state_dict()))
    assert [g.width for g in groups] == [6, 8, 5, 7]
    assert all(m.key != "6.weight" for m in groups[0].members)
    assert ("8.weight", 1, 4) in groups[2].members  # flattened: 4 positions per channel


def _vgg_closed_form(name: str) -> tuple[int, int]:
    """FLOPs (2 per multiply-add of convs and the linear) and parameters of a CIFAR VGG, by hand."""
    from models.vgg import VGG_CFGS
    flops, params, c_in, size = 0, 0, 3, 32
    for c in VGG_CFGS[name]:
        if c == "M":
            size //= 2
            continue
        flops += 2 * size * size * c * c_in * 9
        params += c * c_in * 9 + c + 2 * c  # conv weight and bias, BN weight and bias
        c_in = c
    return flops + 2 * c_in * 10, params + c_in * 10 + 10


@pytest.mark.parametrize("name", ["VGG11", "VGG16"])
def test_flops_and_params_match_the_closed_form(name):
    from ifm.metrics import count_flops, count_params
    model = models.create_model(name)
    flops, params = _vgg_closed_form(name)
    assert (count_flops(model, (3, 32, 32)), count_params(model)) == (flops, params)
    if name == "VGG11":
        assert flops == 305_539_072 and params == 9_231_114


def test_resnet18_counts_are_pinned():
    from ifm.metrics import count_flops, count_params
    model = models.create_model("ResNet18")
    assert (count_flops(model, (3, 32, 32)), count_params(model)) == (1_110_845_440, 11_173_962)


def test_a_flattened_input_holds_the_traced_block_per_channel():
    """The traced graph knows how many positions per channel a linear after a flatten reads (stored on the member);
    a checkpoint whose linear reads another multiple of the width does not fit (a hand map would accept it)."""
    from ifm.trace import trace_spaces, traced_layer_spaces
    spaces = traced_layer_spaces(trace_spaces(plain_cnn(), (3, 8, 8)))
    sd = plain_cnn().state_dict()
    assert ("8.weight", 1, 4) in build_groups(sd, spaces)[2].members
    sd["8.weight"] = torch.zeros(7, 5 * 8)
    assert ("8.weight", 1, 8) in build_groups(sd, chain_spaces(sd))[2].members
    with pytest.raises(ValueError, match="does not fit"):
        build_groups(sd, spaces)
