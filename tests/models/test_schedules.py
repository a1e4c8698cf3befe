"""Warm-up/decay schedules built from torch.optim.lr_scheduler."""

from __future__ import annotations

import pytest
import torch

from src.models.schedules import warmup_then_decay


def learning_rates(schedule: str, warmup: int, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = warmup_then_decay(optimizer, warmup, total, schedule)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_linear_warmup_then_linear_decay_to_zero():
    rates = learning_rates("linear", warmup=4, total=12)
    assert rates[0] == pytest.approx(2.0 * 1e-3)
    assert rates[4] == pytest.approx(2.0)  # peak right after warm-up
    assert all(a < b for a, b in zip(rates[:4], rates[1:5]))  # rising
    decay = rates[4:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # falling
    # Linear decay over 8 steps: step k after the peak is 2 * (1 - k/8).
    assert decay == pytest.approx([2.0 * (1 - k / 8) for k in range(8)])


def test_cosine_and_constant():
    cosine = learning_rates("cosine", warmup=2, total=10)
    assert cosine[2] == pytest.approx(2.0) and cosine[-1] < 0.2
    constant = learning_rates("constant", warmup=2, total=10)
    assert constant[2:] == pytest.approx([2.0] * 8)


def test_no_warmup_and_bad_arguments():
    assert learning_rates("linear", warmup=0, total=4)[0] == pytest.approx(2.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="schedule"):
        warmup_then_decay(optimizer, 1, 10, "exponential")
    with pytest.raises(ValueError, match="max_steps"):
        warmup_then_decay(optimizer, 1, 0)
