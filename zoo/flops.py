"""Parameter and multiply-accumulate counting with torch's own flop counter."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of a single image, in eval mode.

    Uses ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions, linear layers, matmuls and
    attention (SDPA) and ignores element-wise work (BN, activations, pooling); MACs are its FLOPs / 2.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else 'cpu'
        x = torch.zeros(1, *input_size, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
