"""Nyströmformer attention (Xiong et al., AAAI 2021), a baseline of the YOSO paper on LRA.

Softmax attention ``S = softmax(Q Kᵀ/√d)`` is approximated through ``L`` landmarks
``Q̃``, ``K̃`` (segment means of the queries and keys):

    S ≈ softmax(Q K̃ᵀ/√d) · pinv(softmax(Q̃ K̃ᵀ/√d)) · softmax(Q̃ Kᵀ/√d + key mask)

with the pseudo-inverse computed by a few matrix-only iterations, plus an optional
depthwise convolution of ``V`` along the sequence as a skip connection.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from src.models.components.attention import SoftmaxAttention
from src.models.components.masks import as_bool_mask
from src.models.components.sequence_conv import SequenceConv


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``allowed``; a row with nothing allowed is 0, not NaN."""
    filled = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return filled.softmax(dim=-1) * allowed.to(scores.dtype)


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse of ``[..., L, L]`` by Nyströmformer's cubic iteration.

    ``Z0 = Aᵀ / (‖A‖₁ ‖A‖∞)`` (Razavi et al. 2014) is per matrix, so one sequence
    never changes another's result. Zero rows/columns of ``A`` (empty landmarks)
    stay zero in every iterate, so they act as if removed from the matrix.
    """
    identity = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm_1 = a.abs().sum(dim=-2).amax(dim=-1)  # max column sum
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)  # max row sum
    scale = (norm_1 * norm_inf).clamp_min(torch.finfo(a.dtype).tiny)
    z = a.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def landmark_means(
    key_mask: torch.Tensor, num_landmarks: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaging matrix ``[B, L, n]`` of the landmark segments and their validity ``[B, L]``.

    Segments split each sequence's *real* tokens (in order) into ``L`` nearly
    equal runs: the token of rank ``r`` among ``ℓ`` real tokens goes to segment
    ``floor(r L / ℓ)``. So padding neither dilutes a mean nor wastes landmarks,
    and any length works. With ``ℓ < L`` some segments are empty (invalid).
    """
    length = key_mask.sum(dim=-1, keepdim=True)  # [B, 1]
    rank = key_mask.long().cumsum(dim=-1) - 1
    segment = torch.div(rank * num_landmarks, length.clamp_min(1), rounding_mode="floor")  # [B, n]
    ids = torch.arange(num_landmarks, device=key_mask.device)
    members = (segment[:, None, :] == ids[None, :, None]) & key_mask[:, None, :]  # [B, L, n]
    counts = members.sum(dim=-1)  # [B, L]
    averaging = members.to(dtype) / counts.clamp_min(1)[..., None].to(dtype)
    return averaging, counts > 0


class NystromAttention(nn.Module):
    """Nyströmformer attention with segment-mean landmarks and an iterative pseudo-inverse.

    Computed in float32 (or the input's wider dtype) whatever the input precision:
    the pseudo-inverse iteration is not stable in half precision. Padded query rows
    output 0 (the conv skip included); padded keys never change any output.

    Args:
        num_heads: heads ``H``; the conv skip has one filter per head.
        head_dim: per-head dim ``d``.
        num_landmarks: ``L`` landmarks; inputs with ``n <= L`` use exact softmax attention.
        pinv_iterations: iterations of the pseudo-inverse (6 in the Nyströmformer paper).
        conv_window: odd window of the depthwise conv skip on ``V`` (the name YOSO-C uses),
            or None for no skip.
    """

    reads_sequence_order: ClassVar[bool] = True  # its landmarks are means of sequence segments


    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        num_landmarks: int = 64,
        pinv_iterations: int = 6,
        conv_window: int | None = 35,
    ) -> None:
        super().__init__()
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        if pinv_iterations < 0:
            raise ValueError(f"pinv_iterations must be >= 0, got {pinv_iterations}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.exact = SoftmaxAttention(num_heads, head_dim)
        self.conv = SequenceConv(num_heads, conv_window) if conv_window is not None else None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, _, length, _ = q.shape
        key_mask = as_bool_mask(mask, batch, length, q.device)
        keep = key_mask[:, None, :, None]
        # Zero padded positions with `where`, not a product, so that even inf/NaN there cannot leak.
        q, k, v = (torch.where(keep, t, 0) for t in (q, k, v))
        if length <= self.num_landmarks:
            out = self.exact(q, k, v, key_mask)
        else:
            out = self._nystrom(q, k, v, key_mask)
        if self.conv is not None:
            out = out + self.conv(v, key_mask)
        return torch.where(keep, out, 0)

    def _nystrom(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor
    ) -> torch.Tensor:
        out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=q.device.type, enabled=False):
            scale = self.head_dim**-0.25  # on both sides: Q Kᵀ / √d
            q, k, v = q.to(dtype) * scale, k.to(dtype) * scale, v.to(dtype)
            averaging, valid = landmark_means(key_mask, self.num_landmarks, dtype)
            q_landmarks = averaging[:, None] @ q  # [B, H, L, d]
            k_landmarks = averaging[:, None] @ k
            landmark_cols = valid[:, None, None, :]
            kernel_1 = masked_softmax(q @ k_landmarks.transpose(-1, -2), landmark_cols)  # [B, H, n, L]
            kernel_2 = masked_softmax(q_landmarks @ k_landmarks.transpose(-1, -2), landmark_cols)
            kernel_2 = kernel_2 * valid[:, None, :, None].to(dtype)  # empty landmarks: zero rows too
            kernel_3 = masked_softmax(q_landmarks @ k.transpose(-1, -2), key_mask[:, None, None, :])
            out = (kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)) @ (kernel_3 @ v)
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        conv = self.conv.window if self.conv is not None else None
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, landmarks={self.num_landmarks}, "
                f"pinv_iterations={self.pinv_iterations}, conv_window={conv}")
