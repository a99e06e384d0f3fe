"""Distillation of a merged network from its original on unlabelled images (``--distill``)."""
from __future__ import annotations

import copy
import csv

import pytest
import torch

import models
from ifm import (Compression, build_groups, chain_spaces, compress, iterative_feature_merging, model_for_state_dict,
                 slim_model)
from ifm.distill import augmented, distill_model, distillation_loss, mixed
from ifm.experiments.arguments import cli
from ifm.experiments.compare import FAMILIES, check_frontier, frontier_styles, methods, write_frontier
from ifm.experiments.run import RunOptions, RunSpec
from ifm.experiments.io import read_jsonl
from ifm.synthesis import SyntheticImages
from ifm.experiments.planted import copy_channel
from tests.helpers import plain_cnn, refused_in_one_line, script


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_a_merge_that_keeps_the_function_is_left_unchanged():
    torch.manual_seed(0)
    teacher = plain_cnn(widths=(6, 8, 5)).eval()
    sd = teacher.state_dict()
    groups = build_groups(sd, chain_spaces(sd))
    for group in groups[:2]:  # exact duplicates (rows and columns): the official rule keeps the function
        copy_channel(sd, group, 0, group.width - 1)
    teacher.load_state_dict(sd)
    merged = iterative_feature_merging(sd, groups, beta=1e-9, device="cpu")
    assert merged.n_merges == 2
    student = slim_model(teacher, merged.state_dict)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = _outputs(student, x)
    torch.testing.assert_close(before, _outputs(teacher, x), rtol=1e-5, atol=1e-5)
    done = distill_model(student, teacher, torch.randn(32, 3, 8, 8), steps=20)
    assert done.final_loss < 1e-8 and done.steps == 20 and done.images == 32
    torch.testing.assert_close(_outputs(student, x), before, rtol=1e-5, atol=1e-5)


def test_a_damaged_student_recovers_toward_its_teacher_on_held_out_inputs():
    torch.manual_seed(0)
    teacher = plain_cnn(widths=(8, 8, 8), num_classes=5).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn_like(p))
    train = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    held_out = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(3))

    def gap(model):
        return distillation_loss(_outputs(model, held_out), _outputs(teacher, held_out)).item()
    before = gap(student)
    done = distill_model(student, teacher, train, steps=300, lr=0.05)
    assert done.final_loss < 0.5 * done.start_loss  # the loss falls
    assert gap(student) < 0.5 * before  # and the student moves toward its teacher where it was not trained
    agree = (_outputs(student, held_out).argmax(1) == _outputs(teacher, held_out).argmax(1)).float().mean()
    assert agree > 0.8


def test_augmentation_crops_and_flips_each_image_alone_and_is_seeded():
    batch = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    a = augmented(batch, torch.Generator().manual_seed(0))
    b = augmented(batch, torch.Generator().manual_seed(0))
    assert a.shape == batch.shape and torch.equal(a, b)
    with torch.no_grad():  # without shift room, only flips can happen: each image is itself or its mirror
        c = augmented(batch, torch.Generator().manual_seed(1), pad=0)
    assert all(torch.equal(c[k], batch[k]) or torch.equal(c[k], batch[k].flip(-1)) for k in range(2))


def test_mixup_blends_each_image_with_one_other_of_its_batch():
    batch = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    out = mixed(batch, torch.Generator().manual_seed(1), "mixup")
    assert torch.equal(out, mixed(batch, torch.Generator().manual_seed(1), "mixup"))  # seeded
    assert not torch.allclose(out, batch)
    flat, images = out.flatten(1), batch.flatten(1)
    for k in range(6):  # out[k] = w x_k + (1 - w) x_j for one j and one w in [0, 1], whatever the draws
        fits = []
        for j in range(6):
            d = images[k] - images[j]
            w = 1.0 if j == k else float((flat[k] - images[j]) @ d / (d @ d))
            fits.append(0 <= w <= 1 and torch.allclose(w * images[k] + (1 - w) * images[j], flat[k], atol=1e-6))
        assert any(fits)
    assert torch.equal(mixed(batch, torch.Generator().manual_seed(1), "none"), batch)


def test_cutmix_pastes_one_box_of_another_image():
    batch = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 8, 8).contiguous()
    out = mixed(batch, torch.Generator().manual_seed(3), "cutmix")
    assert not torch.equal(out, batch)
    for k in range(4):
        pasted = out[k, 0] != k
        assert torch.equal(out[k, 0], out[k, 1]) and len(out[k].unique()) <= 2  # one other image, every channel
        if pasted.any():
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            box = pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            assert box.all() and int(pasted.sum()) == box.numel()  # a rectangle


def test_mixing_keeps_a_kept_function_unchanged_and_changes_a_distillation():
    torch.manual_seed(0)
    teacher = plain_cnn(widths=(6, 8, 5)).eval()
    student = copy.deepcopy(teacher)
    images = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    assert distill_model(student, teacher, images, steps=5, mix="cutmix").final_loss < 1e-10
    runs = {}
    for mix in ("none", "mixup", "cutmix"):
        damaged, noise = copy.deepcopy(teacher), torch.Generator().manual_seed(5)  # the same damage each time
        with torch.no_grad():
            for p in damaged.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=noise))
        runs[mix] = distill_model(damaged, teacher, images, steps=5, mix=mix).losses
    assert runs["none"] != runs["mixup"] and runs["none"] != runs["cutmix"] and runs["mixup"] != runs["cutmix"]


def test_compress_shows_the_distillation_steps_only_when_asked(capsys):
    teacher = _tiny_vgg()
    images = SyntheticImages(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 1.0, 0.5, 0.0)
    c = Compression(beta=0.999, max_ratio=0.5, synthetic_bn=8, distill=3, distill_images=16)
    compress(teacher, c, input_size=(3, 32, 32), images=images)
    assert "distilling" not in capsys.readouterr().err
    compress(teacher, c, input_size=(3, 32, 32), images=images, progress=True)
    err = capsys.readouterr().err
    assert "distilling on 16 images" in err and "/3 " in err and "step/s" in err  # (tqdm redraws at its own pace)


def test_bad_distillations_are_refused():
    teacher = plain_cnn()
    with pytest.raises(ValueError, match="0 or more"):
        distill_model(copy.deepcopy(teacher), teacher, torch.randn(4, 3, 8, 8), steps=-1)
    with pytest.raises(ValueError, match="needs images"):
        distill_model(copy.deepcopy(teacher), teacher, torch.zeros(0, 3, 8, 8), steps=5)
    with pytest.raises(ValueError, match="distill_mix must be one of none, mixup, cutmix"):
        distill_model(copy.deepcopy(teacher), teacher, torch.randn(4, 3, 8, 8), steps=5, mix="blend")


def _tiny_vgg(seed: int = 0):
    torch.manual_seed(seed)
    return models.create_model("VGG11", width=0.125).eval()


def test_compress_distils_on_its_synthesised_images_or_on_given_inputs():
    teacher = _tiny_vgg()
    images = SyntheticImages(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 1.0, 0.5, 0.0)
    c = Compression(beta=0.999, max_ratio=0.5, synthetic_bn=8, distill=10, distill_images=16)
    done = compress(teacher, c, input_size=(3, 32, 32), images=images)
    plain = compress(teacher, c.replace(distill=0), input_size=(3, 32, 32), images=images)
    assert done.distillation.steps == 10 and done.distillation.images == 16
    assert done.widths == plain.widths and "distillation" in done.seconds
    changed = [k for k in plain.state_dict if not torch.equal(plain.state_dict[k], done.state_dict[k])]
    assert changed and all(not k.endswith(("running_mean", "running_var")) for k in changed)  # weights learn, BN kept
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # the returned module is the distilled state dict
        torch.testing.assert_close(done.model.eval()(x), model_for_state_dict("VGG11", done.state_dict).eval()(x))
    real = compress(teacher, c.replace(synthetic_bn=0, distill_images=0), input_size=(3, 32, 32),
                    distill_inputs=torch.rand(12, 3, 32, 32))
    assert real.distillation.images == 12 and real.synthesis is None
    with pytest.raises(ValueError, match="needs images"):
        compress(teacher, Compression(distill=5), input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="needs 16"):
        compress(teacher, c.replace(distill_images=16), input_size=(3, 32, 32),
                 images=SyntheticImages(images.images[:8], 1.0, 0.5, 0.0))


@pytest.mark.slow
def test_cli_distillation_reads_no_data_set_records_and_reuses_its_images(tiny_checkpoints, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr("ifm.synthesis.ITERATIONS", 5)

    def no_data(*args, **kwargs):
        raise AssertionError("a data set was constructed")
    for name in ("load_cifar10", "imagenet_val", "load_image_folder"):
        monkeypatch.setattr(f"ifm.experiments.data.{name}", no_data)
    monkeypatch.setattr("torchvision.datasets.CIFAR10", no_data)
    monkeypatch.setattr("torchvision.datasets.ImageFolder", no_data)
    results, merged = tmp_path / "r.jsonl", tmp_path / "m.pt"
    base = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--no_eval", "--threshold",
            "0.6", "--results", str(results), "--no_progress"]
    assert cli("cifar10", "vgg", base + ["--synthetic_bn", "8", "--distill", "6", "--distill_images", "16",
                                         "--save_merged", str(merged)]) == 0
    assert cli("cifar10", "vgg", base + ["--synthetic_bn", "8", "--distill", "6", "--distill_images", "16"]) == 0
    assert cli("cifar10", "vgg", base + ["--synthetic_bn", "8"]) == 0
    assert cli("cifar10", "vgg", base + ["--synthetic_bn", "8", "--distill", "6", "--distill_images", "16",
                                         "--distill_mix", "none"]) == 0
    out = capsys.readouterr().out
    assert "distilled 6 steps on 16 synthetic images, cutmix" in out  # the default
    assert "distilled 6 steps on 16 synthetic images (loss" in out  # --distill_mix none
    first, second, plain, unmixed = read_jsonl(results)
    assert first["distill_mix"] == "cutmix" and unmixed["distill_mix"] is None and unmixed["synthesis"]["cached"]
    assert unmixed["distillation"]["final_loss"] != first["distillation"]["final_loss"]
    assert first["distill"] == 6 and first["distill_images"] == 16 and first["distill_data"] == "synthetic"
    assert plain["distill"] == 0 and plain["distill_images"] is None and "distillation" not in plain
    d = first["distillation"]
    assert d["steps"] == 6 and d["images"] == 16 and d["seconds"] > 0 and d["final_loss"] >= 0
    assert first["synthesis"]["images"] == 16 and not first["synthesis"]["cached"] and second["synthesis"]["cached"]
    assert second["distillation"]["final_loss"] == d["final_loss"]  # same images, same seed: the same run
    assert plain["synthesis"]["images"] == 8 and not plain["synthesis"]["cached"]
    assert merged.is_file()


@pytest.mark.parametrize("extra,message", [
    (["--distill", "-1"], "--distill must be 0 or more"),
    (["--distill", "5"], "--distill 5 needs images"),
    (["--distill", "5", "--distill_images", "-2"], "--distill_images must be 0 or more"),
    (["--distill", "5", "--distill_data", "real"], "needs --distill_images N"),
    (["--distill", "5", "--distill_data", "real", "--distill_images", "8"], "give --data_root"),
    (["--distill", "5", "--synthetic_bn", "8", "--baseline", "l1"], "--distill trains merged models")])
def test_cli_bad_distillation_is_one_error_line(extra, message, tiny_checkpoints, tmp_path, capsys):
    refused_in_one_line(tiny_checkpoints["VGG11"], extra, message, tmp_path / "r.jsonl", capsys)


def test_the_frontier_adds_distilled_rows_and_a_real_data_reference_only_when_asked():
    spec = RunSpec(arch="VGG11", model_param="vgg11.pt", data_root="data", distill=300)
    compared = methods(spec, synthetic=64, recalibrate=2000)
    distilled = [m for m in compared if m.spec.distill]
    assert all(m.spec.distill == 300 for m in distilled) and len(distilled) == 4
    assert {m.spec.method for m in distilled} == {"ifm", "kmeans"}  # never a pruning baseline
    real = [m for m in distilled if m.spec.distill_data == "real"]
    assert len(real) == 1 and real[0].uses_data and real[0].spec.distill_images == 2000
    assert all(m.spec.synthetic_bn == 64 for m in distilled if m not in real)
    assert not [m for m in methods(spec.replace(distill=0)) if m.spec.distill]


def test_the_frontier_names_the_mixing_of_its_distilled_rows():
    spec = RunSpec(arch="VGG11", model_param="vgg11.pt", data_root="data", distill=300)
    mixed_rows = [m for m in methods(spec) if m.spec.distill]
    plain_rows = [m for m in methods(spec.replace(distill_mix="none")) if m.spec.distill]
    assert all(m.spec.distill_mix == "cutmix" and "cutmix" in m.label for m in mixed_rows)  # the real bound too
    assert all(m.spec.distill_mix == "none" and "cutmix" not in m.label for m in plain_rows)
    assert {m.label for m in mixed_rows}.isdisjoint(m.label for m in plain_rows)  # never one curve for both


def test_the_distilled_rows_run_only_at_the_budgets_asked():
    spec = RunSpec(arch="VGG11", model_param="vgg11.pt", data_root="data", distill=300)
    compared = methods(spec, synthetic=64, recalibrate=2000, distill_budgets=[25])
    runs = check_frontier(RunOptions(), [56, 25], compared)
    distilled = {(m.label, r.target_params) for m, r in runs if r.distill}
    assert distilled and {b for _, b in distilled} == {25.0}
    assert {r.target_params for m, r in runs if not r.distill} == {56.0, 25.0}


def test_every_frontier_curve_has_a_style_of_its_own_and_its_family_colour():
    spec = RunSpec(arch="VGG11", model_param="vgg11.pt", data_root="data", distill=300)
    compared = methods(spec, synthetic=64, recalibrate=2000)
    styles = frontier_styles(compared)
    assert set(styles) == {m.label for m in compared}
    drawn = [(s["color"], str(s["linestyle"])) for s in styles.values()]
    assert len(set(drawn)) == len(drawn)  # no two curves look alike (β allocation vs L1 pruning once did)
    assert len({s["marker"] for s in styles.values()}) == len(styles)
    for family in {m.family for m in compared}:
        assert len({styles[m.label]["color"] for m in compared if m.family == family}) == 1


def test_the_short_frontier_figure_draws_the_headline_methods_only(tmp_path, monkeypatch):
    from ifm.experiments import compare
    spec = RunSpec(arch="VGG11", model_param="vgg11.pt", data_root="data", distill=300)
    compared = methods(spec, synthetic=64, recalibrate=2000)
    curves = {m.label: [{"target_params": 25.0, "params_pct": 25.0, "acc_after": 50.0 + i, "acc_before": 83.0}]
              for i, m in enumerate(compared)}
    drawn = {}
    monkeypatch.setattr(compare, "plot_frontier", lambda c, path, styles, **kw: drawn.setdefault(path.name, set(c)))
    table, figure, short = write_frontier(curves, compared, tmp_path, "t")
    assert drawn["frontier.png"] == set(curves)
    assert drawn["frontier_short.png"] == {m.label for m in compared if m.headline}
    assert {"IFM (β allocation)", "k-means + BN re-estimated on 64 synthetic images"} <= drawn["frontier_short.png"]
    assert len(drawn["frontier_short.png"]) == 6  # the paper's IFM, best repairs, distillation, two references
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert {r["family"] for r in rows} == set(FAMILIES) and sum(r["headline"] == "True" for r in rows) == 6


def test_compare_methods_resumes_and_replots_without_running(tiny_checkpoints, tmp_path, capsys):
    compare_methods = script("compare_methods")
    results, out = tmp_path / "c.jsonl", tmp_path / "fig"
    base = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--no_eval", "--no_progress",
            "--synthetic", "0", "--recalibrate", "0", "--seeds", "1", "--results", str(results), "--out", str(out)]
    assert compare_methods.main(base + ["--budgets", "50"]) in (0, None)
    first = len(list(read_jsonl(results)))
    assert compare_methods.main(base + ["--budgets", "50", "30", "--replot"]) in (0, None)
    assert len(list(read_jsonl(results))) == first  # nothing run
    rows = list(csv.DictReader((out / "frontier.csv").read_text().splitlines()))
    assert {r["target_params"] for r in rows} == {"50.0"} and len(rows) == first
    assert (out / "frontier.png").is_file() and (out / "frontier_short.png").is_file()
    assert compare_methods.main(base + ["--budgets", "50", "30"]) in (0, None)
    assert len(list(read_jsonl(results))) == 2 * first  # only the new budget's runs
