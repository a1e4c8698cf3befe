"""Attention modules over ``[B, H, n, d]`` queries, keys and values.

Every module has the same call, ``forward(q, k, v, mask) -> [B, H, n, d]``, so
the shared encoder can take any of them, or a user's class with the same
constructor head ``(num_heads, head_dim, ...)``, as a factory from the config.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from src.kernels import YOSOOptions, yoso_attention
from src.kernels.options import Hashing, Precision
from src.models.components.masks import as_bool_mask
from src.models.components.sequence_conv import SequenceConv

_DEFAULT = YOSOOptions  # field defaults are class attributes: one set of defaults, in options.py


class YOSOAttention(nn.Module):
    """YOSO attention (YOSO-m sampling, YOSO-E expectation, optional YOSO-C conv on V).

    Args:
        num_heads: heads ``H``; the YOSO-C convolution has one filter per head.
        head_dim: per-head dim ``d``.
        conv_window: odd kernel size of the depthwise convolution on ``V`` (YOSO-C), or None.
        hash_code_len, num_hashes, expectation, lsh_backward, hashing, backend,
            backward_precision: the ``YOSOOptions`` (``src/kernels/options.py``), checked
            here, when the model is built. ``hash_code_len`` is required: tau belongs to the
            task, so a config that lost it fails instead of training with a silent default.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        hash_code_len: int,
        num_hashes: int = _DEFAULT.num_hashes,
        expectation: bool = _DEFAULT.expectation,
        conv_window: int | None = None,
        lsh_backward: bool = _DEFAULT.lsh_backward,
        hashing: Hashing = _DEFAULT.hashing,
        backend: str | None = _DEFAULT.backend,
        backward_precision: Precision = _DEFAULT.backward_precision,
    ) -> None:
        super().__init__()
        for name, value in (("num_heads", num_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"YOSOAttention: {name} must be an int >= 1, got {value!r}")
        try:
            self.options = YOSOOptions(
                hash_code_len=hash_code_len, num_hashes=num_hashes, expectation=expectation,
                lsh_backward=lsh_backward, hashing=hashing, backend=backend,
                backward_precision=backward_precision,
            )
        except ValueError as error:
            raise ValueError(f"YOSOAttention: {error}") from None
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.conv = SequenceConv(num_heads, conv_window) if conv_window is not None else None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        conv_weight = self.conv.weight if self.conv is not None else None
        return yoso_attention(q, k, v, mask, options=self.options, conv_weight=conv_weight)

    @property
    def reads_sequence_order(self) -> bool:
        """Only YOSO-C's convolution depends on where tokens stand (see ``position_ids``)."""
        return self.conv is not None

    def extra_repr(self) -> str:
        o = self.options
        kind = "expectation" if o.expectation else f"m={o.num_hashes}"
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {kind}, tau={o.hash_code_len}"


class SoftmaxAttention(nn.Module):
    """Softmax attention via ``scaled_dot_product_attention`` with the key padding mask.

    Padded query rows, and rows whose keys are all padding, return 0 (never NaN).
    """

    reads_sequence_order: ClassVar[bool] = False  # a set of keys: compacted inputs give the same result

    def __init__(self, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self._dropout_p())
        key_mask = as_bool_mask(mask, k.shape[0], k.shape[2], k.device)
        has_keys = key_mask.any(dim=-1)
        # An all-padding row would softmax over nothing (NaN): let it see every
        # key, then zero it below.
        allowed = key_mask | ~has_keys[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None, None, :], dropout_p=self._dropout_p()
        )
        if q.shape[2] == k.shape[2]:
            keep = key_mask & has_keys[:, None]
        else:
            keep = has_keys[:, None].expand(-1, q.shape[2])
        return out * keep[:, None, :, None].to(out.dtype)

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0
