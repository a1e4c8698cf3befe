"""YOSO-C's depthwise convolution along the sequence, applied to the masked values."""

from __future__ import annotations

import torch
from torch import nn

# Output rows computed per banded product. Larger blocks waste (block + window - 1)/window
# times the direct multiply-adds on zeros; smaller ones make the GEMMs too thin.
_BLOCK = 64


def _banded(weight: torch.Tensor, block: int) -> torch.Tensor:
    """``[H, block, block + window - 1]`` Toeplitz bands: ``band[h, i, i + t] = weight[h, t]``.

    Built by tiling the zero-padded filter with period ``width + 1`` and cutting rows of
    ``width``, which shifts each row one step right; differentiable in ``weight``.
    """
    heads, window = weight.shape
    width = block + window - 1
    period = nn.functional.pad(weight, (0, width + 1 - window))  # [H, width + 1]
    return period.repeat(1, block)[:, : block * width].reshape(heads, block, width)


class SequenceConv(nn.Module):
    """One odd-length filter per head, slid along the sequence of ``V * mask`` with zero padding.

    ``forward(v [B, H, n, d], key_mask bool [B, n]) -> [B, H, n, d]``; padded positions
    contribute nothing (their values are zeroed before the convolution).

    Why not ``conv2d(groups=H)``: PyTorch's CPU depthwise path with a ``(window, 1)``
    kernel is slower than the whole YOSO attention beside it. The convolution is
    computed instead as one batched GEMM: blocks of ``_BLOCK`` output rows times a
    banded Toeplitz matrix of the filter, over overlapping windows of the values.
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
        batch, heads, length, dim = v.shape
        half = self.window // 2
        block = min(_BLOCK, length)
        blocks = -(-length // block)
        masked = v * key_mask[:, None, :, None].to(v.dtype)
        # Zero padding: `half` rows before, `half` + the block tail after.
        padded = nn.functional.pad(masked, (0, 0, half, half + blocks * block - length))
        windows = padded.unfold(2, block + 2 * half, block)  # [B, H, blocks, d, block + 2 half]
        band = _banded(self.weight.to(v.dtype), block)  # [H, block, block + 2 half]
        out = torch.einsum("hik,bhndk->bhnid", band, windows)  # [B, H, blocks, block, d]
        return out.reshape(batch, heads, blocks * block, dim)[:, :, :length]

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={self.window}"
