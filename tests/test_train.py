"""Training from configs: every config's model trains, resume is exact, bad configs fail clearly."""
import json
from pathlib import Path

import pytest
import torch

import train_model
from ifm.experiments.config import load_config
from ifm.errors import IFMError
from ifm.experiments.io import read_jsonl
from ifm.experiments.arguments import cli
from ifm.experiments.train import augment, train_from_config
from tests.helpers import script

CFGS = sorted(Path(__file__).resolve().parents[1].glob("cfg/*_training.yml"))
VGG11_CFG = next(p for p in CFGS if p.stem == "vgg11_training")
TINY = ["train.epochs=1", "train.batch_size=16", "model.width=0.125", "data.test_samples=20", "train.device=cpu"]


def test_all_seven_configs_exist_and_follow_the_paper():
    assert {p.stem for p in CFGS} == {f"{m}_training" for m in
                                      ["vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50"]}
    for path in CFGS:
        cfg = load_config(path)
        assert (cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay, cfg.train.milestones) == (150, 0.1, 1e-4, [80, 120])
        assert cfg.data.augment == ["crop", "flip"] and cfg.data.normalize is False


def test_configs_share_one_base_and_a_file_overrides_it(tmp_path):
    (tmp_path / "a.yml").write_text("base: b.yml\ntrain:\n  epochs: 7\n")
    (tmp_path / "b.yml").write_text("base: recipe.yml\nmodel:\n  name: VGG13\ntrain:\n  epochs: 9\n  lr: 0.05\n")
    (tmp_path / "recipe.yml").write_text((CFGS[0].parent / "cifar10_paper.yml").read_text())
    config = load_config(tmp_path / "a.yml", ["train.seed=3"])
    assert (config.model.name, config.train.epochs, config.train.lr, config.train.seed) == ("VGG13", 7, 0.05, 3)
    assert config.train.milestones == [80, 120]  # from the shared recipe
    (tmp_path / "recipe.yml").write_text("base: a.yml\n")
    with pytest.raises(IFMError, match="cycle"):
        load_config(tmp_path / "a.yml")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_one_epoch_on_tiny_data(cfg, cifar_root, tmp_path):
    config = load_config(cfg, TINY + [f"data.root={cifar_root}", f"output_dir={tmp_path}"])
    run_dir, history = train_from_config(config, cfg.stem, "t", progress=False)
    assert len(history) == 1 and history[0].train_loss > 0 and 0 <= history[0].test_acc <= 100
    assert (run_dir / "params" / "model_epoch0.pt").exists()
    assert (run_dir / "curves.png").stat().st_size > 0 and (run_dir / "config.yml").exists()
    assert len(list(read_jsonl(run_dir / "metrics.jsonl"))) == 1


@pytest.mark.slow
def test_resume_repeats_an_uninterrupted_run_exactly(cifar_root, tmp_path):
    common = ["train.epochs=3", "train.batch_size=16", "model.width=0.125", "data.test_samples=20",
              "train.device=cpu", "train.milestones=[1]", f"data.root={cifar_root}"]
    full = load_config(VGG11_CFG, common + [f"output_dir={tmp_path / 'a'}"])
    run_a, hist_a = train_from_config(full, "cfg", "x", progress=False)
    part = load_config(VGG11_CFG, common + [f"output_dir={tmp_path / 'b'}", "train.epochs=2"])
    train_from_config(part, "cfg", "x", progress=False)
    rest = load_config(VGG11_CFG, common + [f"output_dir={tmp_path / 'b'}"])
    run_b, hist_b = train_from_config(rest, "cfg", "x", resume=True, progress=False)
    assert [h.epoch for h in hist_b] == [2]
    curve_a = [r["train_loss"] for r in read_jsonl(run_a / "metrics.jsonl")]
    curve_b = [r["train_loss"] for r in read_jsonl(run_b / "metrics.jsonl")]
    assert curve_a == curve_b
    sd_a = torch.load(run_a / "params" / "model_epoch2.pt", weights_only=True)
    sd_b = torch.load(run_b / "params" / "model_epoch2.pt", weights_only=True)
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.slow
def test_existing_run_is_not_overwritten_and_resume_needs_a_run(cifar_root, tmp_path, capsys):
    argv = ["--cfg", str(VGG11_CFG), "--prefix", "p", "--data_root", str(cifar_root), "--no_progress",
            "--set", *TINY, f"output_dir={tmp_path}"]
    assert train_model.main(argv) == 0
    assert train_model.main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_model.main(argv[:4] + ["--prefix", "other", "--resume", "--set", f"output_dir={tmp_path}"]) == 2


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("train.epochs=three", "config key 'train.epochs'"),
    ("optimiser.lr=0.1", "unknown config key 'optimiser'"),
    ("data.augment=[rotate]", "unknown augmentation 'rotate'"),
])
def test_bad_configs_fail_clearly(override, message):
    with pytest.raises(IFMError, match=message.replace("[", r"\[")):
        load_config(VGG11_CFG, [override])


def test_unknown_key_in_a_yaml_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("model:\n  name: VGG11\n  depth: 3\n")
    with pytest.raises(IFMError, match="model.depth"):
        load_config(bad)


def test_augment_crop_and_flip():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = augment(images, ["crop", "flip"], gen)
    assert out.shape == images.shape
    assert torch.equal(augment(images, [], gen), images)
    flipped = augment(images, ["flip"], torch.Generator().manual_seed(3))
    for k in range(2):
        assert torch.equal(flipped[k], images[k]) or torch.equal(flipped[k], images[k].flip(2))
    cropped = augment(images, ["crop"], gen)  # every crop is a shifted window with zero padding
    assert ((cropped == 0) | torch.isin(cropped, images)).all()


@pytest.mark.slow
def test_trained_checkpoint_runs_through_the_self_merge_script(cifar_root, tmp_path):
    config = load_config(VGG11_CFG, TINY + [f"data.root={cifar_root}", f"output_dir={tmp_path}"])
    run_dir, _ = train_from_config(config, "vgg11_training", "quick", progress=False)
    ckpt = run_dir / "params" / "model_epoch0.pt"
    results = tmp_path / "r.jsonl"
    assert cli("cifar10", "vgg", ["--vgg_name", "VGG11", "--model_param", str(ckpt), "--data_root", str(cifar_root),
                                  "--results", str(results), "--no_progress"]) == 0
    (record,) = list(read_jsonl(results))
    assert record["params_before"] == sum(v.numel() for k, v in torch.load(ckpt).items()
                                          if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.slow
def test_models_trained_together_equal_models_trained_alone(cifar_root, tmp_path):
    """train_together interleaves the steps of several models; each must end as if trained alone."""
    from ifm.experiments.data import load_cifar10
    from ifm.experiments.train import Trainer, train_together
    data = (load_cifar10(cifar_root, "train", progress=False), load_cifar10(cifar_root, "test", progress=False))
    common = ["train.epochs=2", "train.batch_size=16", "model.width=0.125", "train.device=cpu",
              f"data.root={cifar_root}"]
    cfgs = {name: load_config(next(p for p in CFGS if p.stem == f"{name.lower()}_training"), common)
            for name in ["VGG11", "ResNet18"]}
    alone = {}
    for name, cfg in cfgs.items():
        trainer = Trainer(cfg, tmp_path / "alone" / name, progress=False, data=data)
        trainer.fit()
        alone[name] = trainer.model.state_dict()
    together = [Trainer(cfg, tmp_path / "together" / name, progress=False, data=data) for name, cfg in cfgs.items()]
    train_together(together, progress=False)
    for trainer in together:
        expected = alone[trainer.config.model.name]
        assert all(torch.equal(v, expected[k]) for k, v in trainer.model.state_dict().items())
        assert len(trainer.history) == 2


@pytest.mark.slow
def test_distributed_training_on_two_processes(cifar_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical weights, rank 0 writes the run,
    and the loss curve follows a single-process run of the same global batch."""
    import os
    import subprocess
    import sys
    overrides = ["train.epochs=2", "train.batch_size=32", "train.lr=0.02", "model.width=0.125", "train.device=cpu",
                 "train.milestones=[1]", f"data.root={cifar_root}"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "tests" / "ddp_worker.py"), str(VGG11_CFG), str(tmp_path), *overrides]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    distributed = [r["train_loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(distributed) == 2  # rank 0 alone wrote its metrics
    from ifm.experiments.train import Trainer
    single = Trainer(load_config(VGG11_CFG, overrides), tmp_path / "single", progress=False)
    single.fit()
    alone = [h.train_loss for h in single.history]
    # same global batches; only BN's batch statistics differ (computed on each rank's half)
    assert distributed == pytest.approx(alone, rel=0.1)


@pytest.mark.slow
def test_bench_train_prints_rates_per_mode(capsys, monkeypatch):
    import sys
    bench_train = script("bench_train")
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--model", "VGG11", "ResNet18", "--width", "0.0625",
                                      "--device", "cpu", "--steps", "1", "--batch_size", "8", "--modes", "fp32",
                                      "bf16", "--together"])
    bench_train.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("VGG11", "fp32"), ("ResNet18", "fp32"), ("together", "fp32"),
                                             ("VGG11", "bf16"), ("ResNet18", "bf16"), ("together", "bf16")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


@pytest.mark.slow
def test_bf16_autocast_trains_on_the_cpu_and_is_recorded(cifar_root, tmp_path):
    config = load_config(VGG11_CFG, TINY + [f"data.root={cifar_root}", f"output_dir={tmp_path}", "train.amp=true",
                                            "train.channels_last=true", "train.cuda_graph=true"])
    run_dir, history = train_from_config(config, "vgg11_training", "bf16", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bfloat16" and summary["cuda_graph"] is False  # CUDA graphs: CUDA only
    assert summary["channels_last"] is True and history[0].train_loss > 0
    # a channels-last model is saved in the standard layout (its checkpoints merge right anywhere)
    for saved in [torch.load(p, weights_only=True) for p in (run_dir / "params").glob("*.pt")] + \
            [torch.load(run_dir / "state" / "last.pt", weights_only=True)["model"]]:
        assert saved and all(v.is_contiguous() for v in saved.values())


def test_a_second_training_with_the_same_prefix_refuses(cifar_root, tmp_path):
    config = load_config(VGG11_CFG, TINY + [f"data.root={cifar_root}", f"output_dir={tmp_path}"])
    from ifm.experiments.train import run_directory
    claimed = run_directory(config, "cfg", "same", resume=False)
    assert claimed.is_dir()
    with pytest.raises(IFMError, match="already holds a run"):
        run_directory(config, "cfg", "same", resume=False)


@pytest.mark.parametrize("name,message", [("tpu", "unknown --device 'tpu'"), ("cuda:0", "CUDA is not available")])
def test_bad_device_names_fail_clearly(name, message):
    from ifm.device import pick_device
    if name.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(IFMError, match=message):
        pick_device(name)


@pytest.mark.slow
def test_resume_uses_the_runs_own_config(cifar_root, tmp_path, capsys):
    """--resume without repeating the start's --set overrides continues the same run; only safe keys change."""
    start = ["--cfg", str(VGG11_CFG), "--prefix", "r", "--data_root", str(cifar_root), "--no_progress", "--set",
             *TINY, f"output_dir={tmp_path}"]
    assert train_model.main(start) == 0
    resume = ["--cfg", str(VGG11_CFG), "--prefix", "r", "--resume", "--no_progress", "--set", f"output_dir={tmp_path}"]
    assert train_model.main(resume + ["train.epochs=2"]) == 0
    (run_dir,) = tmp_path.glob("*/r_vgg11_training")
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]
    capsys.readouterr()
    assert train_model.main(resume + ["train.epochs=3", "model.width=0.5"]) == 2
    err = capsys.readouterr().err
    assert "model.width" in err and "cannot change on --resume" in err and "Traceback" not in err
    (run_dir / "state" / "last.pt").write_bytes(b"truncated")
    assert train_model.main(resume + ["train.epochs=3"]) == 2
    assert "cannot resume from" in capsys.readouterr().err


@pytest.mark.parametrize("value,expected", [("1", 1), ("2", 2), ("", None), ("x", None)])
def test_thread_count_follows_omp_num_threads(monkeypatch, value, expected):
    import os
    from ifm.device import configure_threads
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    try:
        threads = configure_threads()
        assert threads == torch.get_num_threads() == (expected or len(os.sched_getaffinity(0)))
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_training_imports_do_not_load_the_merge_kernels():
    import subprocess
    import sys
    code = "import sys, ifm.experiments.config, ifm.experiments.train; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-500:]


@pytest.mark.parametrize("override,message", [
    ("model.name=VGG99", "unknown model 'VGG99'"), ("model.width=0", "'model.width' must be positive"),
    ("train.lr=-0.1", "'train.lr' must be positive"), ("train.batch_size=0", "'train.batch_size' must be positive"),
    ("model.num_classes=0", "'model.num_classes' must be positive"),
    ("train.save_every=0", "'train.save_every' must be positive"), ("train.momentum=1.5", "in [0, 1)"),
    ("train.milestones=5", "expected a list"), ("train=3", "must be a section"),
])
def test_config_values_out_of_range_fail_before_training(override, message):
    with pytest.raises(IFMError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(VGG11_CFG, [override])


def test_a_config_that_is_not_utf8_is_one_error(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_bytes("model:\n  name: VGG11\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(IFMError, match="not UTF-8"):
        load_config(bad)
