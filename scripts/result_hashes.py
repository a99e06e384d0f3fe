"""Hashes of merged state dicts for the cases the closing notes cite, to show that default results stay
bit-identical across changes (compare the printed lines before and after a change).

    python scripts/result_hashes.py --vgg11 ../shared/checkpoints/vgg11_cifar10_s0.pt

Each line: the case, its merge count and the first 16 hex digits of sha256 over every key and its tensor's bytes
(contiguous, in the state dict's order).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.experiments.run import RunSpec  # noqa: E402
from ifm.experiments.loading import load_model  # noqa: E402
from ifm.experiments.selfmerge import merge_weights  # noqa: E402

CASES = {  # name -> merge_weights options
    "beta 0.2": dict(beta=0.2),
    "beta 0.2, BN folded": dict(beta=0.2, bn_mode="fold"),
    "beta 0.1, mean rule, correction weights": dict(beta=0.1, rule="mean", bn_correction="weights"),
    "k-means, max_ratio 0.5": dict(beta=0.999, max_ratio=0.5, rule="mean", clustering="kmeans"),
}


def state_hash(state_dict) -> str:
    digest = hashlib.sha256()
    for key, value in state_dict.items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vgg11", required=True, help="the shared CIFAR VGG11 checkpoint")
    args = parser.parse_args(argv)
    loaded = load_model(RunSpec(arch="VGG11", model_param=args.vgg11))
    for name, options in CASES.items():
        result = merge_weights(loaded, device="cpu", **options)
        print(f"VGG11 {name}: {result.n_merges} merges, {state_hash(result.state_dict)}")


if __name__ == "__main__":
    main()
