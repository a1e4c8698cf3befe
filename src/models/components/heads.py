"""Pooling and classification heads on top of the encoder's hidden states."""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("mean", "mean_padded", "cls")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``[B, n, dim]`` over real tokens only (padding must not dilute the average)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def padded_mean(hidden: torch.Tensor, mask: torch.Tensor, padded_length: int | None = None) -> torch.Tensor:
    """The LRA harness's pooling: the masked outputs summed and divided by the padded length.

    That is ``n`` of the batch, which must then be padded to a fixed length (``pad_to``), else the
    divisor changes with the batch; or ``padded_length`` for batches compacted to their real
    tokens (``compact_masked``), which are shorter than the array the harness divided by.
    """
    return (hidden * mask.to(hidden.dtype).unsqueeze(-1)).sum(1) / (padded_length or hidden.shape[1])


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, pooling: str, padded_length: int | None = None
) -> torch.Tensor:
    """``[B, n, dim] -> [B, dim]``: the [CLS] vector at position 0, the mean of real tokens, or
    their sum over the padded length (``mean_padded``, the LRA harness)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        return masked_mean(hidden, mask)
    if pooling == "mean_padded":
        return padded_mean(hidden, mask, padded_length)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class ClassificationHead(nn.Sequential):
    """The LRA head: Linear(dim, hidden) -> ReLU -> Linear(hidden, outputs)."""

    def __init__(self, dim: int, hidden: int, outputs: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
