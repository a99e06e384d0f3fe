"""What a new user hit on a fresh clone (issue #25), each pinned by a test that failed before its fix: the any-CNN
entry's ResNet stages and its group listing, verdicts on untrained models, and figures that mislead."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from ifm.experiments import figures, plots, reproduction
from ifm.experiments.arguments import main as any_cnn

ROOT = Path(__file__).resolve().parents[1]


def _capture_figures(monkeypatch) -> list:
    """Figures handed to ``save_figure``, kept open for inspection (nothing is written)."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path
    for module in (plots, figures):
        monkeypatch.setattr(module, "save_figure", keep)
    return kept


# ------------------------------------------------------------------------------ the any-CNN entry
def test_list_groups_of_a_torchvision_resnet_names_the_stages_left_out_and_needs_no_checkpoint(capsys):
    assert any_cnn(["--arch", "resnet18", "--list_groups"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 channel groups") and "6 spaces left out" in out
    left = out[out.index("spaces left out"):out.index("frozen spaces")]
    for producer in ["conv1", "layer1.0.conv1", "layer2.0.conv2"]:
        assert f"  {producer}  width" in left
    assert "--stages 1 2 3 4 merges every stage" in left


@pytest.mark.slow
def test_stages_1_to_4_merge_every_stage_of_a_torchvision_resnet(tmp_path, capsys):
    import torchvision
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    assert any_cnn(["--arch", "resnet18", "--stages", "1", "2", "3", "4", "--list_groups"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("12 channel groups") and "left out" not in listed
    results = tmp_path / "r.jsonl"
    assert any_cnn(["--arch", "resnet18", "--model_param", str(path), "--stages", "1", "2", "3", "4", "--threshold",
                    "0.05", "--no_eval", "--no_progress", "--results", str(results)]) == 0
    from ifm.experiments.io import read_jsonl
    record, = read_jsonl(results)
    assert record["stages"] == [1, 2, 3, 4] and len(record["widths"]) == 12
    assert {"layer1.0.relu1", "layer1.0.relu2", "layer2.0.relu1"} <= set(record["widths"])


@pytest.mark.slow
def test_list_groups_of_any_model_without_a_checkpoint_says_relu6(capsys):
    assert any_cnn(["--arch", "mobilenet_v2", "--list_groups"]) == 0
    out = capsys.readouterr().out
    assert "channel groups under the mean merge rule" in out and "ReLU6" in out and "hardtanh" not in out
    assert any_cnn(["--arch", "tests.helpers:plain_cnn", "--input_size", "3", "8", "8", "--list_groups"]) == 0
    assert "4 channel groups" in capsys.readouterr().out


# ------------------------------------------------------------------------------ verdicts and summaries
def _records(acc_before: float) -> dict[str, list[dict]]:
    """Sweeps of four VGGs where every β keeps the accuracy (as at chance level)."""
    params = {"VGG11": 9.2e6, "VGG13": 9.4e6, "VGG16": 14.7e6, "VGG19": 20.0e6}
    return {m: [{"beta": b, "acc_before": acc_before, "acc_after": acc_before, "params_before": p,
                 "params_after": p * (1 - b) * (1 - 0.1 * k), "params_pct": 100 * (1 - b) * (1 - 0.1 * k)}
                for b in (0.1, 0.5, 0.9)] for k, (m, p) in enumerate(params.items())}


def test_claims_on_models_at_chance_level_are_not_meaningful():
    at_chance = reproduction.paper_comparison(_records(10.0))
    assert [c["status"] for c in at_chance] == ["not meaningful", "not run", "not meaningful"]
    assert "judged only on models trained to ≥ 50 % (here VGG16 10.00 %)" in at_chance[0]["rule"]
    trained = reproduction.paper_comparison(_records(90.0))
    assert [c["status"] for c in trained] == ["reproduced", "not run", "reproduced"]


def test_the_summary_labels_its_two_accuracies_of_one_model():
    summary = {"profile": {"name": "smoke", "description": "tiny", "betas": [0.1]}, "reduced_scale": True,
               "settings": {"precision": "bf16", "seed": 0}, "device": "cpu", "torch_version": "x",
               "training": [{"model": "VGG11", "epochs": 1, "device": "cpu", "precision": "bf16", "cuda_graph": False,
                             "train_seconds": 1, "images_per_second": 1, "final_test_acc": 79.33}],
               "models": [{"model": "VGG11", "bn_mode": "official", "trained_acc": 79.42, "params": 10,
                           "beta_95": None}],
               "paper_comparison": [], "stage_seconds": {}}
    text = reproduction.format_summary(summary)
    assert "| test acc (training) |" in text and "| acc before merging |" in text
    assert "float32 evaluation of the same checkpoint" in text


# ------------------------------------------------------------------------------ figures
@pytest.mark.slow
def test_fig3b_and_fig5a_titles_name_the_setting_and_original_widths_are_grey(monkeypatch, tmp_path):
    kept = _capture_figures(monkeypatch)
    record = {"beta": 0.1, "acc_before": 90.0, "acc_after": 89.0, "params_before": 1e6, "params_after": 5e5,
              "eval_samples": 10000, "widths": {"a": 3, "b": 5}, "original_widths": {"a": 8, "b": 8}}
    figures.plot_accuracy_vs_count({"VGG11": record}, tmp_path / "fig3b.png", "BN fold, reduced scale")
    figures.plot_feature_complexity({"VGG11": record, "VGG13": {**record, "widths": {"a": 4, "b": 6}}},
                                    tmp_path / "fig5a.png", 0.1, "BN fold, reduced scale")
    for fig in kept:
        assert fig.axes[0].get_title().endswith("\nBN fold, reduced scale")
    dashed = [line for line in kept[1].axes[0].get_lines() if line.get_linestyle() == "--"]
    assert dashed and all(line.get_color() == "gray" for line in dashed)


def test_every_reference_line_of_the_equivalence_figure_lies_inside_the_axes(monkeypatch, tmp_path):
    from ifm.experiments.equivalence import LayerEquivalence, plot_equivalence
    kept = _capture_figures(monkeypatch)
    # points from 10 to 90 %: matplotlib's 5 % margin ends at 94; the original model's line at 93.9 sat on the spine
    rows = [LayerEquivalence(0.1, f"l{k}", 8, 6, 0.9, 10.0 + 40 * k, 12.0 + 39 * k, 40.0, 93.9, 0.5, 0.1, 2)
            for k in range(3)]
    plot_equivalence(rows, tmp_path / "e.png")
    ax = kept[0].axes[1]
    lo, hi = ax.get_ylim()
    margin = 0.03 * (hi - lo)
    for y in (40.0, 93.9, 10.0, 90.0):
        assert lo + margin < y < hi - margin


def test_a_group_without_activation_is_a_grey_panel_that_says_so(monkeypatch, tmp_path):
    kept = _capture_figures(monkeypatch)
    images = torch.rand(2, 3, 8, 8)
    maps = [("active", torch.rand(2, 3, 8, 8)), ("silent", torch.zeros(2, 3, 8, 8))]
    figures.plot_guided_grid(images, maps, tmp_path / "g.png")
    axes = kept[0].axes
    silent = axes[4:6]  # row 3 of a 3 x 2 grid
    for ax in silent:
        shown = ax.get_images()[0].get_array()
        assert float(shown.min()) == float(shown.max()) == 0.5
        assert [t.get_text() for t in ax.texts] == ["no activation"]
    assert not axes[2].texts


def test_beta_labels_merge_coinciding_points_and_stay_inside_the_axes():
    one = [(0.96, 0.90, 0.01), (0.96, 0.90, 0.05), (0.961, 0.899, 0.1), (0.80, 0.85, 0.2), (0.6, 0.7, 0.3),
           (0.4, 0.5, 0.4), (0.2, 0.05, 0.5)]
    two = [(0.96, 0.90, 0.01), (0.79, 0.86, 0.2), (0.61, 0.69, 0.3), (0.41, 0.52, 0.4), (0.21, 0.06, 0.5)]
    layout = plots.beta_label_layout([one, two])
    texts = [[t for t, _, _ in labels] for labels in layout]
    assert "β 0.01–0.1" in texts[0] and len(texts[0]) == 5 and len(texts[1]) == 5
    boxes = [(u, v, u + 0.0105 * len(t), v + 0.04) for labels in layout for t, u, v in labels]
    assert all(0 <= a and 0 <= b and c <= 1 and d <= 1 for a, b, c, d in boxes)
    overlapping = sum(min(p[2], q[2]) > max(p[0], q[0]) and min(p[3], q[3]) > max(p[1], q[1])
                      for k, p in enumerate(boxes) for q in boxes[k + 1:])
    assert overlapping == 0


def test_every_beta_of_fig3a_is_labelled(monkeypatch, tmp_path):
    kept = _capture_figures(monkeypatch)
    curve = [{"beta": b, "params_pct": p, "acc_before": 90.0, "acc_after": a} for b, p, a in
             [(0.01, 100.0, 90.0), (0.05, 100.0, 90.0), (0.1, 99.9, 89.98), (0.2, 80, 88), (0.3, 60, 80),
              (0.4, 40, 60), (0.5, 20, 20)]]
    plots.plot_accuracy_vs_params({"VGG11": curve, "VGG16": [{**r, "acc_after": r["acc_after"] - 0.5} for r in curve]},
                                  tmp_path / "f.png")
    labels = [t.get_text() for t in kept[0].axes[0].texts]
    assert labels.count("β 0.01–0.1") == 2 and len(labels) == 10


def test_the_merge_progress_shows_a_count_without_a_misleading_total(tiny_checkpoints, capsys):
    from ifm import channel_groups, iterative_feature_merging
    from ifm.experiments.io import load_state_dict_file
    sd = load_state_dict_file(tiny_checkpoints["VGG11"])
    groups = channel_groups("VGG11", sd)
    result = iterative_feature_merging(sd, groups, beta=0.3, progress=True)
    err = capsys.readouterr().err
    assert result.n_merges > 0 and "IFM merges" in err
    total = sum(g.width for g in groups)
    assert f"/{total}" not in err and "%|" not in err


def test_setup_stops_when_torchvision_does_not_work_with_torch(tmp_path):
    """A torchvision built for another torch imports, then fails at its first operator: setup says so and stops."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\ncase \"$*\" in *nms*) echo 'RuntimeError: operator torchvision::nms does not exist'"
                      " >&2; exit 1;; esac\nexit 0\n")
    python.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env={**os.environ, "VENV": str(tmp_path / "venv")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "error: torchvision does not work with this torch" in done.stderr
    assert "torchvision::nms does not exist" in done.stderr and "--force-reinstall" in done.stderr


def test_the_data_folder_of_the_readme_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/cifar10/train/x.png"], cwd=ROOT)
    assert ignored.returncode == 0
