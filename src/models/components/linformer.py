"""Linformer attention (Wang et al. 2020), a baseline of the YOSO paper on LRA.

Keys and values are projected along the sequence to a fixed ``k`` rows by learned
matrices ``E, F [k, max_length]`` (shared by the heads), so softmax attention costs
``O(n k)``:

    Out = softmax(Q (E K)ᵀ / √d) (F V)

For an input of length ``n`` only the first ``n`` columns ``E[:, :n]`` are used.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from src.models.components.masks import as_bool_mask


class LinformerAttention(nn.Module):
    """Linformer attention with sequence projections shared across heads.

    Padded keys contribute nothing because ``K`` and ``V`` are zeroed at padded
    positions before the projection; padded query rows output 0.

    Args:
        num_heads: heads ``H``.
        head_dim: per-head dim ``d``.
        max_length: longest input; the projections have this many columns.
        projected_length: ``k`` rows that keys and values are projected to.
        share_kv: one projection for both keys and values (``F = E``).
    """

    reads_sequence_order: ClassVar[bool] = True  # it projects keys along the sequence


    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        max_length: int = 4096,
        projected_length: int = 256,
        share_kv: bool = False,
    ) -> None:
        super().__init__()
        if max_length < 1 or projected_length < 1:
            raise ValueError(
                f"max_length and projected_length must be >= 1, got {max_length} and {projected_length}"
            )
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.max_length = max_length
        self.projected_length = projected_length
        self.share_kv = share_kv
        # N(0, 1/k) entries: E[EᵀE] = I, the Johnson–Lindenstrauss scaling of the Linformer analysis.
        std = projected_length**-0.5
        self.key_projection = nn.Parameter(torch.randn(projected_length, max_length) * std)
        if share_kv:
            self.value_projection = None
        else:
            self.value_projection = nn.Parameter(torch.randn(projected_length, max_length) * std)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, _, length, _ = k.shape
        if length > self.max_length:
            raise ValueError(
                f"input length {length} exceeds LinformerAttention's max_length {self.max_length}; "
                "raise model.init_args.encoder.init_args.attention.init_args.max_length"
            )
        key_mask = as_bool_mask(mask, batch, length, k.device)
        keep = key_mask[:, None, :, None]
        # `where`, not a product: padding that holds inf/NaN cannot leak.
        q, k, v = (torch.where(keep, t, 0) for t in (q, k, v))
        value_projection = self.key_projection if self.value_projection is None else self.value_projection
        k_projected = self.key_projection[:, :length].to(k.dtype) @ k  # [B, H, k, d]
        v_projected = value_projection[:, :length].to(v.dtype) @ v
        out = F.scaled_dot_product_attention(q, k_projected, v_projected)
        return torch.where(keep, out, 0)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, max_length={self.max_length}, "
                f"projected_length={self.projected_length}, share_kv={self.share_kv}")
