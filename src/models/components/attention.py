"""Attention modules over ``[B, H, n, d]`` queries, keys and values.

Every module has the same call, ``forward(q, k, v, mask) -> [B, H, n, d]``, so
the shared encoder can take any of them, or a user's class with the same
constructor head ``(num_heads, head_dim, ...)``, as a factory from the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.kernels import yoso_attention
from src.kernels.interface import HASHINGS, PRECISIONS, Precision, as_bool_mask
from src.kernels.reference import check_hash_code_len
from src.models.components.sequence_conv import SequenceConv


def check_yoso_options(
    num_heads: int, head_dim: int, hash_code_len: int, num_hashes: int, hashing: str
) -> None:
    """Fail when the model is built, not at the first batch, with the range each option supports."""
    for name, value in (("num_heads", num_heads), ("head_dim", head_dim), ("num_hashes", num_hashes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"YOSOAttention: {name} must be an int >= 1, got {value!r}")
    check_hash_code_len(hash_code_len)
    if hashing not in HASHINGS:
        raise ValueError(f"YOSOAttention: hashing must be one of {HASHINGS}, got {hashing!r}")


class YOSOAttention(nn.Module):
    """YOSO attention (YOSO-m sampling, YOSO-E expectation, optional YOSO-C conv on V).

    Args:
        num_heads: heads ``H``; the YOSO-C convolution has one filter per head.
        head_dim: per-head dim ``d``.
        hash_code_len: ``tau`` bits per hash. Required: tau belongs to the task (ListOps 11,
            Text/Retrieval 12, Image/Pathfinder 10, language models 9), so a config that
            lost it fails here instead of training with a silent default.
        num_hashes: ``m`` hashes of the sampling estimator.
        expectation: YOSO-E (quadratic, exact expectation) instead of sampling.
        conv_window: odd kernel size of the depthwise convolution on ``V`` (YOSO-C), or None.
        lsh_backward: the paper's linear LSH backward; False uses the expectation backward.
        hashing: ``"gaussian"`` projections or the ``"fast"`` Hadamard hash.
        backend: ``None`` (by device, or ``$YOSO_BACKEND``), ``"reference"``, ``"cpu"``, ``"cuda"``.
        backward_precision: ``"auto"`` (bf16 for bf16 inputs), ``"float32"`` or
            ``"bfloat16"``: operands of the LSH backward's contractions (see ``yoso_attention``).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        hash_code_len: int,
        num_hashes: int = 32,
        expectation: bool = False,
        conv_window: int | None = None,
        lsh_backward: bool = True,
        hashing: str = "gaussian",
        backend: str | None = None,
        backward_precision: Precision = "auto",
    ) -> None:
        super().__init__()
        if backward_precision not in PRECISIONS:
            raise ValueError(f"backward_precision must be one of {PRECISIONS}, got {backward_precision!r}")
        check_yoso_options(num_heads, head_dim, hash_code_len, num_hashes, hashing)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_hashes = num_hashes
        self.hash_code_len = hash_code_len
        self.expectation = expectation
        self.lsh_backward = lsh_backward
        self.hashing = hashing
        self.backend = backend
        self.backward_precision = backward_precision
        self.conv = SequenceConv(num_heads, conv_window) if conv_window is not None else None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = yoso_attention(
            q,
            k,
            v,
            mask,
            num_hashes=self.num_hashes,
            hash_code_len=self.hash_code_len,
            expectation=self.expectation,
            lsh_backward=self.lsh_backward,
            hashing=self.hashing,
            backend=self.backend,
            backward_precision=self.backward_precision,
            conv_weight=self.conv.weight if self.conv is not None else None,
        )
        return out

    def extra_repr(self) -> str:
        kind = "expectation" if self.expectation else f"m={self.num_hashes}"
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {kind}, tau={self.hash_code_len}"


class SoftmaxAttention(nn.Module):
    """Softmax attention via ``scaled_dot_product_attention`` with the key padding mask.

    Padded query rows, and rows whose keys are all padding, return 0 (never NaN).
    """

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
