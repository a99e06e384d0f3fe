"""Parameter and FLOP counts of original and merged models."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (BN affine included, running statistics excluded), as thop counts."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a ``(1, *input_size)`` input (``torch.utils.flop_counter``:
    2 per multiply-add of convs and matmuls; BN, pooling and activations are not counted)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())
