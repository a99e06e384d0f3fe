"""Iterative Feature Merging on a imagenet RESNET: merge, measure, evaluate, append a JSON line.

Example: python resnet_imagenet_self_merge.py --help
"""
import sys

from ifm.experiments.arguments import cli

if __name__ == "__main__":
    sys.exit(cli("imagenet", "resnet"))
