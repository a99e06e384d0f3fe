"""The compression pipeline as one library call, each option defined once (choices, validation, records, the
sweep's skip key, the figures' curves), and BN statistics re-estimated by one path for every entry point."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from ifm import Compression, compress
from ifm.experiments.figures import curves_by_setting
from ifm.experiments.run import RunSpec, from_args, option, record_defaults
from ifm.experiments.arguments import cli, merge_argument_parser
from ifm.experiments.loading import load_model
from ifm.experiments.selfmerge import merge_weights
from ifm.experiments.sweep import run_key
from ifm.pipeline import merge_state_dict, reestimate_statistics, resolve_budget


def _vgg11(seed: int = 0):
    torch.manual_seed(seed)
    model = models.create_model("VGG11", width=0.125)
    gen = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.1, generator=gen)
        bn.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


@pytest.mark.slow
def test_compress_a_module_to_a_parameter_budget_and_its_statistics():
    model = _vgg11()
    done = compress(model, Compression(target_params=40, allocation="uniform", rule="mean"), input_size=(3, 32, 32))
    kept = sum(p.numel() for p in done.model.parameters()) / sum(p.numel() for p in model.parameters())
    assert 0.40 <= kept <= 0.45 and done.budget is not None and done.compression.beta == 0.999
    assert done.widths == done.merge.widths and done.compression.rule == "mean"
    loaded = done.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in done.state_dict.items())  # the module holds the state dict
    # the same merge by the pipeline's steps: identical weights
    arch_done = merge_state_dict(_arch(model), model.state_dict(), done.compression)
    assert all(torch.equal(arch_done.state_dict[k], v) for k, v in done.state_dict.items())
    # BN statistics from real batches: the module's BN sees them
    batches = [torch.rand(16, 3, 32, 32) for _ in range(2)]
    calibrated = compress(model, Compression(beta=0.999, max_ratio=0.3), input_size=(3, 32, 32),
                          calibration=batches)
    first_bn = next(m for m in calibrated.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_conv = calibrated.model.features[0]
    with torch.no_grad():
        out = torch.cat([first_conv(b) for b in batches])
    torch.testing.assert_close(first_bn.running_mean, out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def _arch(model):
    from ifm.pipeline import module_architecture
    return module_architecture(model, (3, 32, 32))


def test_bad_compressions_name_the_parameter():
    for bad, message in [(dict(beta=1.5), "beta must lie in"), (dict(rule="median"), "rule must be one of"),
                         (dict(target_params=0), "target_params"), (dict(clustering="kmeans"), "max_ratio below 1"),
                         (dict(synthetic_bn=-1), "synthetic_bn")]:
        with pytest.raises(ValueError, match=message):
            Compression(**bad)
    with pytest.raises(ValueError, match="not both"):
        compress(_vgg11(), Compression(synthetic_bn=4), input_size=(3, 32, 32), calibration=[torch.rand(2, 3, 32, 32)])


@pytest.mark.slow
def test_the_harness_and_the_library_merge_the_same(tiny_checkpoints):
    loaded = load_model(RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"])))
    spec = RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"]), target_params=60.0, bn_mode="fold",
                   bn_correction="rows")
    resolved, budget = resolve_budget(loaded.arch, loaded.state_dict, loaded.model, spec.compression("official"))
    done = compress("VGG11", spec.compression(), state_dict=loaded.state_dict)
    harness = merge_weights(loaded, resolved.beta, max_ratio=resolved.max_ratio, bn_mode="fold", bn_correction="rows",
                            max_merges=resolved.max_merges)
    assert done.compression == resolved and budget.params_pct >= 60.0
    assert all(torch.equal(harness.state_dict[k], v) for k, v in done.state_dict.items())


def test_a_new_option_reaches_choices_validation_records_skip_key_and_curves():
    @dataclasses.dataclass(frozen=True)
    class Extended(RunSpec):
        colour: str = option("red", "--colour", ("red", "blue"), "a new option")

    parser = merge_argument_parser("cifar10", "vgg", spec_type=Extended)
    with pytest.raises(SystemExit):  # argparse's choices
        parser.parse_args(["--colour", "green"])
    spec, _ = from_args(parser.parse_args(["--colour", "blue", "--no_eval"]), Extended)
    assert spec.colour == "blue"
    with pytest.raises(ValueError, match="colour must be one of"):  # validation
        Extended(arch="VGG11", colour="green")
    assert spec.record_fields()["colour"] == "blue" and record_defaults(Extended)["colour"] == "red"  # records
    red, blue = ({"model": "VGG11", "checkpoint_digest": "d", "beta": 0.1, "acc_after": a, "params_pct": 50.0,
                  **Extended(arch="VGG11", colour=c).record_fields()} for c, a in (("red", 50.0), ("blue", 60.0)))
    assert run_key(red, Extended) != run_key(blue, Extended)  # the sweep's skip key
    assert run_key(red, RunSpec) == run_key(blue, RunSpec)  # (the description without it cannot tell them apart)
    assert len(curves_by_setting([red, blue], Extended)) == 2  # the figures' curves


def test_figure_curves_keep_repaired_and_unrepaired_runs_apart():
    records = [{"model": "VGG11", "checkpoint_digest": "d", "beta": 0.1, "acc_after": acc, "params_pct": 50.0,
                **RunSpec(arch="VGG11", bn_correction=correction, synthetic_bn=n).record_fields()}
               for correction, n, acc in (("none", 0, 40.0), ("weights", 0, 60.0), ("none", 64, 70.0))]
    curves = curves_by_setting(records)
    assert len(curves) == 3 and sorted(c[0]["acc_after"] for c in curves.values()) == [40.0, 60.0, 70.0]
    assert any("correction weights" in label for label in curves)


@pytest.mark.slow
def test_recalibrate_bn_is_in_the_saved_checkpoint(tiny_checkpoints, cifar_root, tmp_path):
    saved = tmp_path / "merged.pt"
    argv = ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]), "--threshold", "0.6",
            "--data_root", str(cifar_root), "--recalibrate_bn", "40", "--save_merged", str(saved), "--results",
            str(tmp_path / "r.jsonl"), "--no_progress", "--workers", "0", "--device", "cpu"]
    assert cli("cifar10", "vgg", argv) == 0
    state = torch.load(saved, weights_only=True)
    loaded = load_model(RunSpec(arch="VGG11", model_param=str(tiny_checkpoints["VGG11"])))
    plain = merge_weights(loaded, 0.6)
    from ifm.experiments import data as datasets
    train = datasets.load_cifar10(str(cifar_root), "train", progress=False)
    images = train.subset(datasets.spread_indices(len(train), 40)).images.float() / 255
    expected = reestimate_statistics(loaded.arch, plain.state_dict, [images])
    key = next(k for k in state if k.endswith("running_var"))
    assert not torch.equal(state[key], plain.state_dict[key])  # re-estimated, not the merge's sums
    torch.testing.assert_close(state[key], expected[key], rtol=1e-4, atol=1e-6)


def test_recalibrate_bn_without_data_is_refused(tiny_checkpoints, tmp_path, capsys):
    code = cli("cifar10", "vgg", ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                                  "--recalibrate_bn", "500", "--no_eval", "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--recalibrate_bn 500" in err[0] and "--data_root" in err[0]
    assert not (tmp_path / "r.jsonl").exists()


def test_library_errors_speak_of_parameters_and_the_cli_of_flags(tiny_checkpoints, tmp_path, capsys):
    with pytest.raises(ValueError, match="^beta must lie in"):
        Compression(beta=2.0)
    code = cli("cifar10", "vgg", ["--vgg_name", "VGG11", "--model_param", str(tiny_checkpoints["VGG11"]),
                                  "--threshold", "2", "--no_eval", "--results", str(tmp_path / "r.jsonl")])
    assert code == 2 and capsys.readouterr().err.startswith("error: --threshold (beta) must lie in")
