"""Benchmark: the k-means baseline's clusters against a reference implementation (goal: within-cluster sum of
squares within 1 % of scikit-learn's ``KMeans``, k-means++ with ``--n_init`` restarts, on every group).

For each group of the checkpoint (the vectors ``--baseline kmeans`` clusters) and each share ``--ratios`` merged,
it prints the group's sum of squares from ``ifm.kmeans`` and from scikit-learn, their ratio (below 1: ours is
better) and both times. Needs scikit-learn (a test requirement).

    python scripts/bench_kmeans.py --arch VGG11 --model_param ../shared/checkpoints/vgg11_cifar10_s0.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.discovery import channel_groups  # noqa: E402
from ifm.experiments.run import RunSpec  # noqa: E402
from ifm.experiments.loading import load_model  # noqa: E402
from ifm.kmeans import kept_width, kmeans_clusters, weight_vectors, within_cluster_sum_of_squares  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="VGG11")
    parser.add_argument("--model_param", required=True)
    parser.add_argument("--stages", type=int, nargs="+", default=None, help="ResNet stages (default: 3 4)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    parser.add_argument("--n_init", type=int, default=10, help="scikit-learn's restarts")
    args = parser.parse_args(argv)
    from sklearn.cluster import KMeans
    loaded = load_model(RunSpec(arch=args.arch, model_param=args.model_param))
    groups = channel_groups(loaded.arch, loaded.state_dict, args.stages, rule="mean", graph=loaded.graph)
    print(f"{'group':>24} {'width':>5} {'ratio':>5} {'k':>4} {'ours':>12} {'sklearn':>12} {'ours/ref':>8} "
          f"{'ours s':>7} {'ref s':>7}")
    worst = 0.0
    for ratio in args.ratios:
        for group in groups:
            vectors, k = weight_vectors(loaded.state_dict, group), kept_width(group.width, ratio)
            start = time.perf_counter()
            ours = within_cluster_sum_of_squares(vectors, kmeans_clusters(vectors, k))
            middle = time.perf_counter()
            reference = KMeans(k, n_init=args.n_init, random_state=0).fit(vectors).inertia_
            end = time.perf_counter()
            quotient = ours / reference if reference > 0 else 1.0
            worst = max(worst, quotient)
            print(f"{group.name:>24} {group.width:>5} {ratio:>5g} {k:>4} {ours:>12.5g} {reference:>12.5g} "
                  f"{quotient:>8.4f} {middle - start:>7.2f} {end - middle:>7.2f}", flush=True)
    print(f"largest ratio ours/reference: {worst:.4f} (goal: at most 1.01)")


if __name__ == "__main__":
    main()
