"""Test-only callbacks that ``train.py`` subprocesses load with ``--trainer.callbacks+=...``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    """Send ``signal_name`` to this very process after optimizer step ``step`` (a crash or a pre-emption)."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class DumpRankState(Callback):
    """Write each rank's final weights (rank<r>.pt) and step losses (rank<r>.json) into folder.

    (Test-only.)
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{rank}.pt")
        (self.folder / f"rank{rank}.json").write_text(json.dumps(self.losses))
