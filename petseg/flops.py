"""Mult-adds of a network's forward, counted per op by torch's FLOP counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(
    q_shape: torch.Size, k_shape: torch.Size, v_shape: torch.Size, *_args: object, **_kwargs: object
) -> int:
    """Torch's attention FLOP formula, for the CPU flash kernel that FlopCounterMode omits."""
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def mult_adds(net: nn.Module, x: torch.Tensor) -> int:
    """Mult-adds of one eval forward: convs, matmuls and attention, counted by torch per op.

    Not torchinfo's `total_mult_adds`: it counts a Linear once per batch element, not per token,
    so transformers come out ~N times too small; and it misses functional attention.
    """
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=cpu_attention) as c:
        net(x)
    return c.get_total_flops() // 2  # a multiply-add is 2 FLOPs
