"""Training time and peak memory of a run, logged so the LRA table can report them.

Logs ``resources/train_time_s`` (wall seconds since training started, validation included,
carried across a resume) and ``resources/peak_memory_mib`` at every validation and at the end
of fit. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU (tensors only: what the
attention's cost changes), else the peak resident memory of this process
(``getrusage``; DataLoader workers not included). ``resources/peak_memory_is_gpu`` (1/0) says
which one a run measured, since the two are not comparable.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU tensor memory of ``device`` or, on CPU, the peak RSS of this process, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class ResourceMonitor(pl.Callback):
    """Logs training time and peak memory at each validation and when fitting ends."""

    def __init__(self) -> None:
        self.elapsed_before = 0.0  # seconds trained before a resume
        self._started: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._started = time.perf_counter()

    def train_time_s(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.elapsed_before + running

    def log_resources(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.logger is None or self._started is None:
            return
        trainer.logger.log_metrics({
            "resources/train_time_s": self.train_time_s(),
            "resources/peak_memory_mib": peak_memory_mib(pl_module.device),
            "resources/peak_memory_is_gpu": float(pl_module.device.type == "cuda"),
        }, step=trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.log_resources(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.log_resources(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_before": self.train_time_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed_before", 0.0))
