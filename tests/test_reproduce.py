"""Sweeps and paper reproduction scripts on tiny models and generated data."""
import json

import pytest
import torch

from ifm import channel_groups, iterative_feature_merging
from ifm.experiments.figures import equivalence_permutations, largest_beta_within, random_permutations
from ifm.experiments.io import read_jsonl
from ifm.naive import naive_distance
from tests.helpers import script

reproduce, sweep_script = script("reproduce"), script("sweep")


@pytest.fixture(scope="module")
def swept(tiny_checkpoints, cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    argv = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--data_root", str(cifar_root),
            "--results", str(out / "sweep.jsonl"), "--no_progress", "--betas", "0.3", "0.6", "0.8"]
    assert sweep_script.main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_sweep_appends_and_skips_done_betas(swept, capsys):
    out, argv = swept
    records = list(read_jsonl(out / "sweep.jsonl"))
    assert [r["beta"] for r in records] == [0.3, 0.6, 0.8]
    assert records[-1]["n_merges"] >= records[0]["n_merges"]
    argv2 = argv[:-3] + ["0.6", "0.9"]  # 0.6 is done: only 0.9 runs
    assert sweep_script.main(argv2) == 0
    assert "beta=0.6: already in" in capsys.readouterr().out
    assert [r["beta"] for r in read_jsonl(out / "sweep.jsonl")] == [0.3, 0.6, 0.8, 0.9]


@pytest.mark.slow
def test_fig3a_fig3b_fig5a_from_sweep_records(swept, tmp_path, capsys):
    out, _ = swept
    results = str(out / "sweep.jsonl")
    assert reproduce.main(["fig3a", "--results", results, "--out", str(tmp_path)]) == 0
    assert reproduce.main(["fig3b", "--results", results, "--out", str(tmp_path)]) == 0
    assert reproduce.main(["fig5a", "--results", results, "--beta", "0.8", "--out", str(tmp_path)]) == 0
    for name in ["fig3a.png", "fig3b.png", "fig3b.csv", "fig5a.png", "fig5a.csv"]:
        assert (tmp_path / name).stat().st_size > 0, name
    records = list(read_jsonl(results))
    chosen = largest_beta_within(records)
    expected = max((r for r in records if r["acc_after"] >= 0.95 * r["acc_before"]), key=lambda r: r["beta"])
    assert chosen["beta"] == expected["beta"]
    csv_rows = (tmp_path / "fig5a.csv").read_text().splitlines()
    widths_08 = next(r for r in records if r["beta"] == 0.8)["widths"]
    record_08 = next(r for r in records if r["beta"] == 0.8)
    assert len(csv_rows) == 1 + len(widths_08)
    assert csv_rows[1].split(",")[3:] == [str(list(widths_08.values())[0]),
                                          str(list(record_08["original_widths"].values())[0])]
    assert reproduce.main(["fig5a", "--results", results, "--beta", "0.55", "--out", str(tmp_path)]) == 2


def test_largest_beta_rule():
    recs = [{"beta": b, "acc_before": 90.0, "acc_after": a} for b, a in [(0.1, 89), (0.2, 86), (0.3, 85), (0.4, 70)]]
    assert largest_beta_within(recs)["beta"] == 0.2  # 86 >= 85.5 > 85


@pytest.mark.slow
def test_fig2a_heatmaps_match_a_direct_computation(tiny_checkpoints, tmp_path):
    assert reproduce.main(["fig2a", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--layers", "0,7", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "distances.png").stat().st_size > 0
    from ifm.experiments.figures import normalized_distances
    from ifm.experiments.io import load_state_dict_file
    sd = load_state_dict_file(tiny_checkpoints["VGG11"])
    group = channel_groups("VGG11", sd)[7]
    direct = naive_distance({k: v.double() for k, v in sd.items()}, group.members, group.width)
    ours = normalized_distances(sd, "VGG11", [7])[group.name]
    torch.testing.assert_close(ours.double(), direct / direct.max(), rtol=1e-4, atol=1e-5)


def test_equivalence_permutation_rotates_clusters_and_random_moves_as_many():
    perms, moved = equivalence_permutations({"g": [[0], [1, 4, 5], [2, 3]]}, {"g": 6})
    assert perms["g"].tolist() == [0, 5, 3, 2, 1, 4] and moved == {"g": 5}
    rand = random_permutations({"g": 10}, {"g": 4}, seed=0)["g"]
    assert sorted(rand.tolist()) == list(range(10)) and (rand != torch.arange(10)).sum() == 4


@pytest.mark.slow
def test_fig2b_endpoints_and_files(tiny_checkpoints, cifar_root, tmp_path):
    assert reproduce.main(["fig2b", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--data_root", str(cifar_root), "--betas", "0.6", "--lambdas", "0,0.5,1",
                           "--out", str(tmp_path), "--no_progress"]) == 0
    (curve,) = json.loads((tmp_path / "fig2b.json").read_text())
    from ifm import model_for_state_dict
    from ifm.experiments.data import load_cifar10
    from ifm.experiments.evaluate import evaluate, tensor_batches
    from ifm.experiments.io import load_state_dict_file
    test = load_cifar10(cifar_root, "test", progress=False)
    model = model_for_state_dict("VGG11", load_state_dict_file(tiny_checkpoints["VGG11"]))
    original = evaluate(model, tensor_batches(test, 64, "cpu"), len(test), progress=False).accuracy
    assert curve["equivalent"][0] == curve["random"][0] == pytest.approx(original)  # λ = 0 is θ itself
    assert curve["moved_features"] > 0 and (tmp_path / "fig2b.png").stat().st_size > 0


def test_the_equivalence_permutation_moves_exactly_the_clusters_channels(tiny_checkpoints):
    """π of Fig. 2(b) swaps features only inside IFM's clusters, and every clustered feature moves."""
    from ifm.experiments.io import load_state_dict_file
    sd = load_state_dict_file(tiny_checkpoints["VGG11"])
    groups = channel_groups("VGG11", sd)
    result = iterative_feature_merging(sd, groups, beta=0.6)
    perms, moved = equivalence_permutations(result.clusters, result.original_widths)
    assert sum(moved.values()) > 0
    for group in groups:
        perm = perms[group.name]
        clustered = {c for cluster in result.clusters[group.name] if len(cluster) > 1 for c in cluster}
        assert {int(k) for k in torch.nonzero(perm != torch.arange(group.width)).flatten()} == clustered
        for cluster in result.clusters[group.name]:
            assert {int(perm[c]) for c in cluster} == set(cluster)  # a cluster maps onto itself
        assert moved[group.name] == len(clustered)


@pytest.mark.slow
def test_table2_small(tmp_path, capsys, tiny_checkpoints):
    assert reproduce.main(["table2", "--models", "cifar10:VGG13", "cifar10:ResNet18", "--device", "cpu",
                           "--repeats", "2", "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "table2.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("cifar10,VGG13,0.018 ± 0.003,")
    records = json.loads((tmp_path / "table2.json").read_text())
    for r in records:  # the default weights merge (a quarter of every layer is near-duplicate)
        assert r["merges"] > 0 and r["iterations"] > 0 and r["repeats"] == 2
        assert r["ours_per_merge_s"] == pytest.approx(r["ours_per_iteration_s"] * r["iterations"] / r["merges"])
    assert reproduce.main(["table2", "--models", "cifar10:VGG16", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--out", str(tmp_path)]) == 2
    assert "do not fit VGG16" in capsys.readouterr().err
    assert reproduce.main(["table2", "--models", "cifar10:VGG11", "cifar10:VGG13", "--model_param",
                           str(tiny_checkpoints["VGG11"]), "--out", str(tmp_path)]) == 2
    import models
    torch.manual_seed(0)
    torch.save(models.create_model("VGG11", width=0.125).state_dict(), tmp_path / "random.pt")
    capsys.readouterr()
    assert reproduce.main(["table2", "--models", "cifar10:VGG11", "--model_param", str(tmp_path / "random.pt"),
                           "--beta", "0.01", "--repeats", "1", "--out", str(tmp_path)]) == 0
    assert "0 merges: nothing to time" in capsys.readouterr().out


@pytest.mark.slow
def test_guided_backprop(tiny_checkpoints, cifar_root, tmp_path):
    assert reproduce.main(["guided", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--data_root", str(cifar_root), "--layer", "features.11", "--beta", "0.6",
                           "--images", "3", "--out", str(tmp_path), "--no_progress"]) == 0
    assert (tmp_path / "guided_backprop.png").stat().st_size > 0
    assert reproduce.main(["guided", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--data_root", str(cifar_root), "--layer", "features.2", "--out", str(tmp_path)]) == 2


def test_guided_backprop_zeroes_other_features():
    from ifm.experiments.figures import guided_backprop
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    x = torch.rand(1, 3, 8, 8)
    only_0 = guided_backprop(model, "1", [0], x)
    with torch.no_grad():
        model[0].weight[1:] = 0  # other features cannot matter
    assert torch.allclose(only_0, guided_backprop(model, "1", [0], x))


def _rec(beta, acc, **fields):
    base = {"model": "VGG11", "dataset": "cifar10", "checkpoint": "runA/params/model_epoch149.pt",
            "checkpoint_digest": "aaaa1111", "method": "ifm", "bn_mode": "official", "recalibrate_bn": 0,
            "order": "official", "max_ratio": 1.0, "eval_samples": 100, "beta": beta, "acc_before": 90.0,
            "acc_after": acc, "params_pct": 100 - 100 * beta, "original_widths": {"perm_features.0": 64}}
    return {**base, **fields}


def test_curves_are_split_by_every_setting_and_labelled_uniquely():
    from ifm.experiments.figures import curves_by_setting
    records = [_rec(0.1, 89), _rec(0.2, 80), _rec(0.1, 88, bn_mode="fold"), _rec(0.1, 89.5, recalibrate_bn=2000),
               _rec(0.1, 70, method="random", acc_after_std=1.5),
               _rec(0.1, 60, checkpoint="runB/params/model_epoch149.pt", checkpoint_digest="bbbb2222"),
               _rec(0.1, 50, checkpoint="runC/params/model_epoch149.pt", checkpoint_digest="cccc3333",
                    original_widths={"perm_features.0": 16}),
               _rec(0.1, 85, acc_after=None)]
    curves = curves_by_setting(records)
    assert len(curves) == 6 and sum(len(v) for v in curves.values()) == 7
    labels = list(curves)
    assert len(set(labels)) == 6
    assert any("runB/model_epoch149" in label for label in labels)
    assert any(label.startswith("VGG11 ×0.25") for label in labels)  # 16 of 64 channels
    assert any("BN fold" in label for label in labels) and any("random pruning" in label for label in labels)
    assert any("BN recalibrated on 2000" in label for label in labels)
    official = next(v for k, v in curves.items() if "runA" in k and "BN official" in k and "IFM" in k
                    and "no BN recalibration" in k)
    assert [r["beta"] for r in official] == [0.1, 0.2]


def test_imagenet_weights_of_one_architecture_get_their_own_curves():
    from ifm.experiments.figures import curves_by_setting
    v1 = _rec(0.1, 75, model="resnet50", dataset="imagenet", checkpoint="torchvision:resnet50.IMAGENET1K_V1",
              checkpoint_digest="tv:resnet50:IMAGENET1K_V1")
    v2 = {**v1, "checkpoint": "torchvision:resnet50.IMAGENET1K_V2", "checkpoint_digest": "tv:resnet50:IMAGENET1K_V2",
          "acc_after": 79}
    assert sorted(curves_by_setting([v1, v2])) == ["resnet50, resnet50.IMAGENET1K_V1", "resnet50, resnet50.IMAGENET1K_V2"]
    same_name = {**v2, "checkpoint": "torchvision:resnet50.IMAGENET1K_V1"}  # same label, other weights
    labels = sorted(curves_by_setting([v1, same_name]))
    assert len(labels) == 2 and labels[0] != labels[1]


def test_guided_backprop_is_guided_for_functional_relus_and_zero_outside_the_cluster():
    """A CIFAR ResNet calls F.relu: its maps must differ from plain gradients, and features outside the
    cluster must not matter."""
    from ifm.experiments.figures import guided_backprop
    import models

    torch.manual_seed(0)
    model = models.create_model("ResNet18", width=0.125).eval()
    x = torch.rand(2, 3, 32, 32)
    guided = guided_backprop(model, "layer3.0.bn1", [0, 3], x)
    plain_x = x.clone().requires_grad_(True)
    out = {}
    handle = model.layer3[0].bn1.register_forward_hook(lambda m, i, o: out.__setitem__("z", o))
    model(plain_x)
    handle.remove()
    out["z"][:, [0, 3]].clamp(min=0).sum().backward()
    assert guided.abs().sum() > 0 and not torch.allclose(guided, plain_x.grad)
    with torch.no_grad():  # weights of the other features of that layer cannot matter
        model.layer3[0].conv1.weight[[1, 2] + list(range(4, model.layer3[0].conv1.weight.shape[0]))] = 0
    torch.testing.assert_close(guided_backprop(model, "layer3.0.bn1", [0, 3], x), guided)


@pytest.mark.slow
def test_guided_figure_for_a_class_writes_its_numbers(tiny_checkpoints, cifar_root, tmp_path):
    assert reproduce.main(["guided", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--data_root", str(cifar_root), "--layer", "features.11", "--beta", "0.6",
                           "--images", "3", "--class", "class03", "--out", str(tmp_path), "--no_progress"]) == 0
    info = json.loads((tmp_path / "guided_backprop.json").read_text())
    assert info["class"] == "class03" and len(info["image_indices"]) == 3 and info["clusters"]
    assert all(12 <= i < 16 for i in info["image_indices"])  # the 4 test images of class 3
    assert reproduce.main(["guided", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--data_root", str(cifar_root), "--layer", "features.11", "--beta", "0.6",
                           "--class", "truck", "--out", str(tmp_path), "--no_progress"]) == 2


@pytest.mark.slow
def test_fig2a_refuses_weights_of_another_architecture(tiny_checkpoints, tmp_path, capsys):
    assert reproduce.main(["fig2a", "--arch", "VGG16", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--out", str(tmp_path)]) == 2
    assert "do not fit VGG16" in capsys.readouterr().err
    assert reproduce.main(["fig2a", "--arch", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                           "--layers", "first12", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "VGG11 has 8 merged layers, fewer than 12" in out
    stats = json.loads((tmp_path / "fig7.json").read_text())
    assert [s["layer"] for s in stats][:2] == ["features.0", "features.4"] and len(stats) == 8
