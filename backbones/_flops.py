"""Parameter and multiply-accumulate counting with torch's own flop counter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch 2.14's counter has formulas for the CUDA attention kernels but not for the CPU flash kernel, which it
# would count as 0; register the standard formula (q.k logits + attention x v) for it.
_CUSTOM_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of a single image, in eval mode.

    Uses ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions, linear layers, matmuls and
    attention (SDPA, on every device) and ignores element-wise work (BN, activations, pooling, softmax);
    MACs are its FLOPs / 2.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else 'cpu'
        dtype = param.dtype if param is not None else torch.float32
        x = torch.zeros(1, *input_size, device=device, dtype=dtype)
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FORMULAS) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
