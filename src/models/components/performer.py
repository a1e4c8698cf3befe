"""Performer attention with FAVOR+ features (Choromanski et al., ICLR 2021), a YOSO-paper baseline.

``exp(qᵀk/√d) = E[φ(q')ᵀ φ(k')]`` for ``x' = x d^{-1/4}`` and the positive random
features ``φ(x) = exp(Wx − ‖x‖²/2)/√m``. Attention becomes linear in ``n``:

    Out = φ(Q) (φ(K)ᵀ V) / (φ(Q) (φ(K)ᵀ 1))       (sums over real keys only)

The rows of ``W`` come in orthogonal blocks (lower variance than i.i.d. rows),
each row rescaled to a chi-distributed norm so that it is marginally Gaussian.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from src.models.components.masks import as_bool_mask


def orthogonal_gaussian_features(
    num_features: int, dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """``[m, d]`` rows: orthogonal within blocks of ``d``, norms like Gaussian vectors' (chi with d dof).

    Drawn from torch's global RNG on ``device``, so ``torch.manual_seed`` replays them.
    """
    num_blocks = math.ceil(num_features / dim)
    gaussian = torch.randn(num_blocks, dim, dim, device=device)
    basis, triangular = torch.linalg.qr(gaussian)
    # Fix QR's sign ambiguity so that each block is Haar-distributed (isotropic rows).
    basis = basis * torch.sign(torch.diagonal(triangular, dim1=-2, dim2=-1))[..., None, :]
    rows = basis.transpose(-1, -2).reshape(num_blocks * dim, dim)[:num_features]
    norms = torch.linalg.vector_norm(torch.randn(num_features, dim, device=device), dim=-1)
    return rows * norms[:, None]


def positive_features(
    x: torch.Tensor, projection: torch.Tensor, stabilizer_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """FAVOR+ ``φ(x)`` for ``x [B, H, n, d]`` (already scaled by ``d^{-1/4}``) -> ``[B, H, n, m]``.

    A max is subtracted inside the ``exp`` to avoid overflow; it cancels between the
    numerator and the normaliser. Without ``stabilizer_mask`` (queries) it is each
    row's own max; with it (keys) one max per (sequence, head) over the real rows,
    so that padded keys cannot push real features into underflow.
    """
    logits = x @ projection.transpose(-1, -2)  # [B, H, n, m]
    half_sq_norm = 0.5 * x.pow(2).sum(dim=-1, keepdim=True)
    with torch.no_grad():
        if stabilizer_mask is None:
            shift = logits.amax(dim=-1, keepdim=True)
        else:
            real = logits.masked_fill(~stabilizer_mask[:, None, :, None], float("-inf"))
            shift = real.amax(dim=(-2, -1), keepdim=True)
            shift = torch.where(torch.isfinite(shift), shift, 0)  # a sequence of padding only
    return torch.exp(logits - half_sq_norm - shift) / math.sqrt(projection.shape[0])


class PerformerAttention(nn.Module):
    """Performer (FAVOR+) linear attention with positive orthogonal random features.

    In training mode (by default) every forward draws new features from torch's RNG,
    as the Performer paper's redrawing does; eval mode uses the ``projection`` buffer
    drawn at construction and saved in the state_dict, so evaluation is deterministic.
    Computed in float32 (or wider) because of the ``exp``. Padded query rows output 0.

    Args:
        num_heads: heads ``H`` (the features are shared by every head).
        head_dim: per-head dim ``d``.
        num_features: random features ``m``.
        redraw_in_training: draw new features at every training forward; False always
            uses the buffer.
    """

    reads_sequence_order: ClassVar[bool] = False  # a set of keys: compacted inputs give the same result

    def __init__(
        self, num_heads: int, head_dim: int, *, num_features: int = 256, redraw_in_training: bool = True
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_features = num_features
        self.redraw_in_training = redraw_in_training
        self.register_buffer("projection", orthogonal_gaussian_features(num_features, head_dim))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, _, length, _ = q.shape
        key_mask = as_bool_mask(mask, batch, length, q.device)
        keep = key_mask[:, None, :, None]
        if self.training and self.redraw_in_training:
            projection = orthogonal_gaussian_features(self.num_features, self.head_dim, q.device)
        else:
            projection = self.projection
        out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=q.device.type, enabled=False):
            scale = self.head_dim**-0.25
            # `where`, not a product: padding that holds inf/NaN cannot leak.
            q, k, v = (torch.where(keep, t.to(dtype), 0) for t in (q, k, v))
            projection = projection.to(dtype)
            q_features = positive_features(q * scale, projection)
            k_features = torch.where(keep, positive_features(k * scale, projection, key_mask), 0)
            numerator = q_features @ (k_features.transpose(-1, -2) @ v)  # [B, H, n, d]
            normalizer = q_features @ k_features.sum(dim=-2)[..., None]  # [B, H, n, 1]
            positive = normalizer > 0  # 0 only without real keys (or on underflow)
            out = torch.where(positive, numerator / normalizer.clamp_min(torch.finfo(dtype).tiny), 0)
            out = torch.where(keep, out, 0)
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, features={self.num_features}, "
                f"redraw_in_training={self.redraw_in_training}")
