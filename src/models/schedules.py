"""Learning-rate schedules composed from ``torch.optim.lr_scheduler`` (no lightning-bolts)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

SCHEDULES = ("linear", "cosine", "constant")
_START_FACTOR = 1e-3  # LinearLR needs a positive start; 1e-3 of the peak is "from ~0"


def warmup_then_decay(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, schedule: str = "linear"
) -> LRScheduler:
    """Linear warm-up to the peak LR, then ``linear`` decay to 0, ``cosine`` decay or ``constant``.

    Stepped once per optimizer step. The LRA and BERT recipes of the paper use
    linear warm-up then linear decay.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (set trainer.max_steps), got {total_steps}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    decay_steps = total_steps - warmup_steps
    if schedule == "linear":
        decay: LRScheduler = LinearLR(optimizer, 1.0, 0.0, total_iters=decay_steps)
    elif schedule == "cosine":
        decay = CosineAnnealingLR(optimizer, T_max=decay_steps)
    else:
        decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup_steps == 0:
        return decay
    warmup = LinearLR(optimizer, _START_FACTOR, 1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
