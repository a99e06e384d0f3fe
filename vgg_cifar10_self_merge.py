"""Iterative Feature Merging on a cifar10 VGG: merge, measure, evaluate, append a JSON line.

Example: python vgg_cifar10_self_merge.py --help
"""
import sys

from ifm.experiments.arguments import cli

if __name__ == "__main__":
    sys.exit(cli("cifar10", "vgg"))
