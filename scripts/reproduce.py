"""Reproduce the paper's figures and tables. One subcommand per item; outputs go to ``--out``.

    python scripts/reproduce.py fig3a  --results results/sweep.jsonl            # also Fig. 4(a), 4(b)
    python scripts/reproduce.py fig3b  --results results/sweep.jsonl
    python scripts/reproduce.py fig5a  --results results/sweep.jsonl --beta 0.1
    python scripts/reproduce.py fig2a  --arch VGG16 --model_param ckpt.pt --layers last   # Fig. 7: --layers first12
    python scripts/reproduce.py fig2b  --arch VGG16 --model_param ckpt.pt --data_root data/cifar10 --betas 0.1
    python scripts/reproduce.py table2 --device cpu
    python scripts/reproduce.py guided --arch VGG16 --model_param ckpt.pt --data_root data/cifar10 --layer features.24
    python scripts/reproduce.py equivalence --arch VGG16 --model_param ckpt.pt --data_root data/cifar10 --betas 0.1 0.2
    python scripts/reproduce.py diagnose --arch VGG16 --model_param ckpt.pt --data_root data/cifar10 --out diag
    python scripts/reproduce.py epochs --arch VGG16 --run_dir run/checkpoints/VGG16 --data_root data/cifar10 \
        --sweep_epochs 15 80 120 150 --out epochs
    python scripts/reproduce.py controls --run base repro_s0 "baseline" --run s1 repro_s1 "seed 1" --seed_run s1 --out c
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ifm.experiments.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
