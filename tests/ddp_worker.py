"""Run by ``torchrun`` in tests/test_train.py: train a tiny model on this rank and save its weights."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ifm.experiments.config import load_config
from ifm.experiments.train import Trainer, init_distributed

if __name__ == "__main__":
    cfg, out, *overrides = sys.argv[1:]
    config = load_config(cfg, overrides)
    assert init_distributed(config.train.device)
    trainer = Trainer(config, Path(out) / "run", progress=False)
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
