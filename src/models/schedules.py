"""Learning-rate schedules: linear warm-up, then linear decay, cosine decay or constant; or one cycle.

One closed-form ``LambdaLR`` (no lightning-bolts, no chained schedulers): the learning rate
at step ``s`` is a function of ``s`` and the schedule's length only. That lets a resumed run
change the length (``--trainer.max_steps`` larger than the run it resumes) and continue
exactly as if it had been started with the new length: ``stretch`` sets the new length and
recomputes the current rate, which a chained (recursive) scheduler cannot do.

``onecycle`` is ``torch.optim.lr_scheduler.OneCycleLR`` as the YOSO paper's LRA harness ran it
(linear anneal, ``pct_start = warmup / steps``, its default beta1/momentum cycling between 0.95
and 0.85); it is closed-form in the step too, so ``stretch`` lengthens it the same way.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

SCHEDULES = ("linear", "cosine", "constant", "onecycle")
WARMUP_SCHEDULES = ("linear", "cosine", "constant")
_START_FACTOR = 1e-3  # the warm-up starts at 1e-3 of the peak ("from ~0", never exactly 0)


class WarmupThenDecay:
    """The factor of the peak learning rate at a step: linear warm-up, then the decay.

    A callable object rather than a function: ``LambdaLR`` then stores its fields in the
    checkpoint, so a resumed run knows the length the checkpoint's run was scheduled for.
    """

    def __init__(self, warmup_steps: int, total_steps: int, schedule: str = "linear") -> None:
        if schedule not in WARMUP_SCHEDULES:
            raise ValueError(f"schedule must be one of {WARMUP_SCHEDULES}, got {schedule!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (set trainer.max_steps), got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.schedule = schedule

    def __call__(self, step: int) -> float:
        warmup = min(self.warmup_steps, self.total_steps - 1)  # at least one step of the decay
        if step < warmup:
            return _START_FACTOR + (1.0 - _START_FACTOR) * step / warmup
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / (self.total_steps - warmup))
        if self.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_then_decay(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, schedule: str = "linear"
) -> LambdaLR:
    """Linear warm-up to the peak LR, then ``linear`` decay to 0, ``cosine`` decay to 0 or ``constant``.

    Stepped once per optimizer step. The LRA and BERT recipes of the paper use
    linear warm-up then linear decay.
    """
    return LambdaLR(optimizer, WarmupThenDecay(warmup_steps, total_steps, schedule))


def one_cycle(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> OneCycleLR:
    """The harness's ``OneCycleLR``: up from lr/25 to the optimizer's lr over ``warmup_steps``,
    then linearly down to lr/25e4 at ``total_steps``; beta1 (or momentum) cycles 0.95 -> 0.85 -> 0.95.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (set trainer.max_steps), got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    # OneCycleLR divides by each phase's length: the warm-up ends at least one step before the
    # last (a run shorter than its warm-up, e.g. a smoke test, only warms up), and a warm-up of
    # one step is none (its peak is step 0 either way).
    warmup = min(warmup_steps, total_steps - 1)
    if warmup == 1:
        warmup = 0
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps,
                      pct_start=warmup / total_steps, anneal_strategy="linear")


def build_schedule(optimizer: Optimizer, schedule: str, warmup_steps: int, total_steps: int) -> LRScheduler:
    """The scheduler a ``schedule`` name stands for (see the module docstring)."""
    if schedule == "onecycle":
        return one_cycle(optimizer, warmup_steps, total_steps)
    return warmup_then_decay(optimizer, warmup_steps, total_steps, schedule)


def schedule_kind(state: dict[str, Any]) -> str | None:
    """``onecycle`` or ``warmup`` (the warm-up-then-decay family) for a saved scheduler state."""
    if "_schedule_phases" in state:
        return "onecycle"
    if "lr_lambdas" in state or "_schedulers" in state or "T_max" in state or "total_iters" in state:
        return "warmup"
    return None


def scheduled_steps(state: dict[str, Any]) -> int | None:
    """The length a saved scheduler state was built for; None where it does not say.

    Reads this module's state and the chained ``SequentialLR``/``LinearLR``/``CosineAnnealingLR``
    states that checkpoints written before it hold.
    """
    if "_schedule_phases" in state:  # OneCycleLR
        return int(state["total_steps"])
    factors = state.get("lr_lambdas") or [None]
    if isinstance(factors[0], dict) and "total_steps" in factors[0]:
        return int(factors[0]["total_steps"])
    parts = state.get("_schedulers")
    if parts:  # SequentialLR([warm-up, decay], milestones=[warm-up steps])
        decay = _chained_steps(parts[-1])
        return None if decay is None else int(state["_milestones"][0]) + decay
    return _chained_steps(state)


def _chained_steps(state: dict[str, Any]) -> int | None:
    """Steps of one chained decay: LinearLR's ``total_iters``, CosineAnnealingLR's ``T_max``."""
    if "T_max" in state:
        return int(state["T_max"])
    if state.get("end_factor") == 0.0:  # ConstantLR (factor 1) has no length of its own
        return int(state["total_iters"])
    return None


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A saved state that ``warmup_then_decay``'s scheduler can load: its counters, no foreign fields.

    Checkpoints written before the closed form hold a ``SequentialLR`` state, which
    ``LambdaLR.load_state_dict`` would fail on; the step count and base rates carry over
    (``stretch`` then recomputes the rate itself).
    """
    if "lr_lambdas" in state or "_schedule_phases" in state:
        return state
    kept = ("last_epoch", "_step_count", "base_lrs", "_last_lr")
    return {**{key: state[key] for key in kept if key in state}, "lr_lambdas": [None]}


def is_warmup_then_decay(scheduler: LRScheduler) -> bool:
    """Whether ``scheduler`` was built by ``warmup_then_decay`` (a task may configure its own)."""
    factors = getattr(scheduler, "lr_lambdas", None)
    return isinstance(scheduler, LambdaLR) and all(isinstance(f, WarmupThenDecay) for f in factors)


def is_stretchable(scheduler: LRScheduler) -> bool:
    """Whether ``stretch`` can give ``scheduler`` a new length (the schedules built here)."""
    return is_warmup_then_decay(scheduler) or isinstance(scheduler, OneCycleLR)


def stretch(scheduler: LRScheduler, total_steps: int) -> float:
    """Give ``warmup_then_decay``'s scheduler a new length and set the rates of its current step.

    After a resume the optimizer holds the rate the old schedule gave this step (0.0 at
    the end of a linear decay); the new one is what a run of ``total_steps`` would use
    here. Returns the first parameter group's new rate.
    """
    if isinstance(scheduler, OneCycleLR):
        return _stretch_one_cycle(scheduler, total_steps)
    if not is_warmup_then_decay(scheduler):
        raise TypeError(f"expected warmup_then_decay's scheduler, got {type(scheduler).__name__}")
    for factor in scheduler.lr_lambdas:
        factor.total_steps = total_steps
    step = scheduler.last_epoch
    rates = [base * factor(step) for factor, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() (and the LR monitor) reports
    return rates[0]


def _stretch_one_cycle(scheduler: OneCycleLR, total_steps: int) -> float:
    """``OneCycleLR`` with a new length: the warm-up keeps its steps, the anneal ends at ``total_steps``.

    The warm-up phase ends where it did (``pct_start`` was ``warmup / steps``); the last phase
    now ends at ``total_steps - 1``. The current step's rate and beta1 are then recomputed.
    """
    if total_steps < scheduler.last_epoch:
        raise ValueError(f"cannot shorten a one-cycle schedule to {total_steps} steps: it is at step "
                         f"{scheduler.last_epoch}")
    scheduler.total_steps = total_steps
    scheduler._schedule_phases[-1]["end_step"] = total_steps - 1
    scheduler._get_lr_called_within_step = True  # get_lr's "use get_last_lr()" warning is for users
    try:
        rates = scheduler.get_lr()  # also sets beta1 / momentum for this step
    finally:
        scheduler._get_lr_called_within_step = False
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
    return float(rates[0])
