"""Iterative Feature Merging on any CNN: channel groups traced from the model's graph, then merge, measure,
evaluate (ImageNet val/) and append a JSON line, with the arguments of the four paper scripts.

    python scripts/self_merge.py --arch mobilenet_v2 --weights DEFAULT --list_groups
    python scripts/self_merge.py --arch resnet50 --model_param resnet50.pth --threshold 0.1 --no_eval
    python scripts/self_merge.py --arch mypackage.nets:build_net --input_size 3 32 32 --model_param mine.pt --no_eval

Installed with ``pip install -e .``, the same command is ``ifm ...``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.experiments.arguments import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
