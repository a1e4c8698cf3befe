"""Real (non-padding) tokens per second, measured by Lightning's ``ThroughputMonitor``.

Lightning's callback counts whatever ``length_fn`` returns as its "items"; here
that is the number of True entries of every ``attention_mask*`` field, so padding
is not counted. It logs on rank 0 only, as a rolling average over
``window_size`` batches of wall time (data loading and the optimizer step
included, validation excluded): ``train/device/items_per_sec`` (this process)
and, under DDP, ``train/items_per_sec`` (that times the number of processes).
Totals (``train/time``, ``train/samples``, ``train/lengths``, ...) and the same
keys for validation (``validate/...``) and testing come with it.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ThroughputMonitor


def examples(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a batch (the first dimension of ``input_ids``)."""
    return int(batch["input_ids"].shape[0])


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a batch, over every ``attention_mask*`` field (retrieval has two)."""
    return int(sum(int(mask.sum()) for key, mask in batch.items() if key.startswith("attention_mask")))


class TokenThroughput(ThroughputMonitor):
    """``ThroughputMonitor`` counting examples and real tokens of this project's batches.

    Args:
        window_size: batches in the rolling average; no rate is logged before that many.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(batch_size_fn=examples, length_fn=real_tokens, window_size=window_size)
