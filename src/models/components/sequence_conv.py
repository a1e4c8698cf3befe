"""YOSO-C's depthwise convolution along the sequence, applied to the masked values."""

from __future__ import annotations

import torch
from torch import nn

from src.kernels.interface import sequence_conv


class SequenceConv(nn.Module):
    """One odd-length filter per head, slid along the sequence of ``V * mask`` with zero padding.

    ``forward(v [B, H, n, d], key_mask bool [B, n]) -> [B, H, n, d]``; padded positions
    contribute nothing (their values count as zero).

    Why not ``conv2d(groups=H)``: PyTorch's CPU depthwise path with a ``(window, 1)``
    kernel is slower than the whole YOSO attention beside it. The convolution is the
    kernels' ``sequence_conv`` op instead (compiled on the CPU, see ``docs/kernels.md``).
    """

    def __init__(self, num_heads: int, window: int) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"conv_window must be a positive odd int (e.g. 31 or 65), got {window}")
        self.num_heads = num_heads
        self.window = window
        self.weight = nn.Parameter(torch.empty(num_heads, window))
        # Same initialisation as a depthwise Conv2d(H, H, (window, 1), groups=H).
        bound = 1.0 / window**0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return sequence_conv(v, key_mask, self.weight)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={self.window}"
