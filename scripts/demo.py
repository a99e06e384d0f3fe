"""Demo: train a small VGG11 on CIFAR-10 on the CPU, run IFM over a β grid, print a table, plot it.

    bash scripts/demo.sh --data_root ../shared/data/cifar10

Nothing is redone: a finished training run is reused, and β values already in the results file are
skipped. About 5 minutes on 2 idle CPU cores (3 epochs of a width-0.25 VGG11, about 65 s each, then the
merges); 14 minutes were measured on a machine busy with other jobs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ifm.experiments import data as datasets  # noqa: E402
from ifm.experiments.config import load_config  # noqa: E402
from ifm.experiments.cli import cli_main  # noqa: E402
from ifm.experiments.plots import plot_accuracy_vs_params  # noqa: E402
from ifm.experiments.run import RunOptions, RunSpec  # noqa: E402
from ifm.experiments.sweep import format_sweep_table, parse_betas, sweep  # noqa: E402
from ifm.experiments.train import train_from_config  # noqa: E402

DEMO_BETAS = ["0.01", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3"]


def trained_checkpoint(args: argparse.Namespace) -> Path:
    """Train (or reuse, or resume) the demo model; returns its last checkpoint."""
    overrides = [f"model.width={args.width}", f"train.epochs={args.epochs}", "train.lr=0.05",
                 f"train.milestones=[{max(1, args.epochs - 1)}]", f"data.root={args.data_root}",
                 f"data.download={str(not args.no_download).lower()}", f"output_dir={args.out}/train",
                 f"train.save_every={args.epochs}"] + ([f"data.subset={args.subset}"] if args.subset else [])
    config = load_config(ROOT / "cfg" / "vgg11_training.yml", overrides)
    runs = sorted(Path(config.output_dir).glob("*/demo_vgg11_training"))
    final = f"params/model_epoch{args.epochs - 1}.pt"
    if runs and (runs[-1] / final).exists():
        print(f"reusing the trained model in {runs[-1]}")
        return runs[-1] / final
    run_dir, _ = train_from_config(config, "vgg11_training", "demo", resume=bool(runs))
    return run_dir / final


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="data/cifar10")
    parser.add_argument("--no_download", action="store_true", help="never try to download CIFAR-10")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--subset", type=int, default=None, help="train on N images (default: all 50,000)")
    parser.add_argument("--betas", nargs="+", default=DEMO_BETAS)
    parser.add_argument("--eval_samples", type=int, default=None)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args(argv)

    def run() -> None:
        datasets.load_cifar10(args.data_root, "test", download=not args.no_download)
        checkpoint = trained_checkpoint(args)
        spec = RunSpec(arch="VGG11", model_param=str(checkpoint), data_root=args.data_root,
                       eval_samples=args.eval_samples)
        records = sweep(spec, RunOptions(results=f"{args.out}/results.jsonl"), parse_betas(args.betas))
        print(f"\nIFM on {checkpoint} (original accuracy {records[0]['acc_before']:.2f}%)")
        print(format_sweep_table(records))
        figure = plot_accuracy_vs_params({"VGG11 x0.25": records}, Path(args.out) / "demo.png",
                                         title="IFM on CIFAR-10: accuracy vs remaining parameters")
        print(f"plot: {figure}\nresults: {args.out}/results.jsonl")
    return cli_main(run)


if __name__ == "__main__":
    sys.exit(main())
