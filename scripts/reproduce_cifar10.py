"""The paper's CIFAR-10 results from scratch with one command: train, sweep β, figures, summary.

    python scripts/reproduce_cifar10.py --data_root data/cifar10 --out repro_paper                  # GPU
    python scripts/reproduce_cifar10.py --data_root data/cifar10 --out repro_cpu --profile reduced \\
        --models VGG11 VGG16                                                                        # CPU
    python scripts/reproduce_cifar10.py --data_root data/cifar10 --out repro_smoke --profile smoke

Profiles: ``paper`` (App. D: 150 epochs, batch 128, full width), ``reduced`` (width 0.25, 15 epochs:
for a CPU; its summary says it is reduced), ``smoke`` (seconds). Each stage is resumable: call the
same command again after an interruption and it continues without repeating finished work. Models
train together, one CUDA stream each; ``--precision bf16`` (default) autocasts to bfloat16 with
channels_last and, on a GPU, replays every step from a CUDA graph; ``--precision fp32`` is plain.
Outputs: ``summary.md``/``summary.json``, ``results.jsonl``, figures with CSVs, and the checkpoints
under ``checkpoints/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.experiments.cli import cli_main  # noqa: E402
from ifm.experiments.io import writable_folder  # noqa: E402
from ifm.device import configure_threads  # noqa: E402
from ifm.experiments.reproduction import (DEFAULT_MODELS, KNOWN_MODELS, PROFILES, SWEEP_MODES,  # noqa: E402
                                          ReproductionSettings, reproduce)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="CIFAR-10: cifar-10-batches-py or ImageFolder train/+test/")
    parser.add_argument("--out", required=True, help="output folder (a second call resumes it)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                        help=f"any of {', '.join(KNOWN_MODELS)} (default: the four VGGs)")
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES))
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--bn_modes", nargs="+", default=["official", "fold"], choices=list(SWEEP_MODES),
                        help="sweep with the official BN merge (summed statistics), BN folded first, and/or the "
                             "official merge with the data-free BN repair (repaired: --bn_correction weights)")
    parser.add_argument("--augment", nargs="+", default=["crop", "flip"], choices=["crop", "flip"],
                        help="training augmentation: the official code crops and flips; the paper names the flip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=float, default=None,
                        help="the models' width multiplier instead of the profile's (e.g. 0.125 for a slower CPU)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    configure_threads()
    settings = ReproductionSettings(args.profile, tuple(args.models), args.data_root, args.out, args.device,
                                    args.precision, args.seed, not args.no_progress, tuple(args.bn_modes),
                                    tuple(args.augment), args.width)

    def run() -> None:
        writable_folder(args.out, "--out")  # before any training
        reproduce(settings)
    return cli_main(run)


if __name__ == "__main__":
    sys.exit(main())
