"""The padding-mask contract every attention module shares.

Why here and not in the kernels: the baselines (softmax, Nystrom, Performer,
Linformer) need the same check, and importing them must not load the YOSO ops.
"""

from __future__ import annotations

import torch


def as_bool_mask(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Validate a ``[B, n]`` 0/1 key padding mask (bool, int or float) and return it as bool.

    ``None`` means "every position is a token". Any value other than 0 and 1 is an
    error: an additive (``-inf``) or scaled mask passed by mistake must not be read
    as "all real".
    """
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.shape != (batch, length):
        raise ValueError(
            f"mask must have shape [batch, seq_len] = {[batch, length]}, got {list(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask must hold only 0 (padding) and 1 (token); got other values. "
                "Pass the 0/1 key padding mask itself, not an additive or scaled mask."
            )
        mask = mask != 0
    return mask.to(device)
