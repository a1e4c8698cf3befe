"""ResourceMonitor logs training time and peak memory at each validation and at the end of fit."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from src.callbacks.resource_monitor import ResourceMonitor


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def high_water_mark_mib() -> float:
    """Peak resident memory from /proc (independent of getrusage)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_time_and_peak_memory_are_logged_at_validation_and_fit_end(tmp_path):
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    trainer = pl.Trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, accelerator="cpu",
                         logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[ResourceMonitor()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    before = high_water_mark_mib()
    trainer.fit(Regression(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    after = high_water_mark_mib()
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    times = events.Scalars("resources/train_time_s")
    assert [e.step for e in times] == [2, 4, 4]  # two validations, then the end of fit
    assert 0 < times[0].value <= times[1].value <= times[2].value
    peaks = [e.value for e in events.Scalars("resources/peak_memory_mib")]
    assert before - 1 <= peaks[0] <= peaks[-1] <= after + 1
    assert [e.value for e in events.Scalars("resources/peak_memory_is_gpu")] == [0.0, 0.0, 0.0]


def test_time_carries_over_a_resume():
    monitor = ResourceMonitor()
    monitor.load_state_dict({"elapsed_before": 120.0})
    assert monitor.train_time_s() == 120.0  # not started yet in this process
    monitor.on_train_start(None, Regression())
    assert monitor.train_time_s() >= 120.0
    assert ResourceMonitor().state_dict() == {"elapsed_before": 0.0}
