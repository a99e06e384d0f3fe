"""Benchmark: the data-free correction's cost against the merge it repairs (goal: under 5 % of the merge time).

For each case (the shared VGG11, or a random-init paper VGG16 without ``--vgg11``; every layer merged by the same
share ``--ratios``, β 0.999; each merge rule and ``--bn_modes``), it prints the merge time, the correction time for
each estimator, and their ratio; each the best of ``--repeats`` runs. With the official BN mode the ``weights``
estimator reads the consumers' Gram matrices from the merge's first pass; folding BN changes the consumers, so the
correction computes them itself.

    python scripts/bench_correction.py --vgg11 ../shared/checkpoints/vgg11_cifar10_s0.pt
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from ifm.experiments.run import RunSpec  # noqa: E402
from ifm.experiments.loading import load_model  # noqa: E402
from ifm.experiments.selfmerge import merge_weights  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vgg11", default=None, help="a trained CIFAR VGG11 checkpoint (else a random VGG16)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bn_modes", nargs="+", default=["official", "fold"], choices=["official", "fold"],
                        help="fold: BN folded before merging (the correction then rescales rows)")
    args = parser.parse_args(argv)
    if args.vgg11:
        spec = RunSpec(arch="VGG11", model_param=args.vgg11)
    else:
        torch.manual_seed(0)
        path = Path(tempfile.mkdtemp()) / "vgg16.pt"
        torch.save(models.create_model("VGG16").state_dict(), path)
        spec = RunSpec(arch="VGG16", model_param=str(path))
    loaded = load_model(spec)
    print(f"{spec.arch}: {'ratio':>5} {'rule':>8} {'BN':>8} {'estimator':>9} {'merge s':>8} {'correction s':>12} "
          f"{'ratio %':>8}")
    for ratio in args.ratios:
        for rule in ("official", "mean"):
            for bn_mode in args.bn_modes:
                for estimator in ("rows", "weights"):
                    runs = [merge_weights(loaded, 0.999, max_ratio=ratio, rule=rule, bn_mode=bn_mode,
                                          bn_correction=estimator) for _ in range(args.repeats)]
                    merge = min(r.seconds for r in runs)
                    correction = min(r.correction_seconds for r in runs)
                    print(f"{'':6s} {ratio:>5g} {rule:>8} {bn_mode:>8} {estimator:>9} {merge:>8.3f} {correction:>12.3f} "
                          f"{100 * correction / merge:>8.1f}")

if __name__ == "__main__":
    main()
