"""Keep ``last.ckpt`` the newest state of a run: every N steps, at the end of fit and on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from src.signals import STOP, StoppedBySignal

LAST = "last.ckpt"


class LastCheckpoint(Callback):
    """Write ``<checkpoint dir>/last.ckpt`` periodically, when fit ends, and once when a run is stopped.

    ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only at validations;
    a run killed between two of them, or one whose last steps come after the
    last validation, would lose that work. With this callback a resumed run
    (``--ckpt_path last``) loses at most ``every_n_train_steps`` steps.

    SIGTERM / SIGINT (pre-emption, ``timeout``, Ctrl+C; ``src.signals``): the signal
    is recorded; after the current optimizer step every rank learns whether any
    rank got one (one all-reduce), all of them save ``last.ckpt`` of that step
    together and raise ``StoppedBySignal``. Lightning's own SIGTERM handler is
    replaced while training: under DDP it broadcasts from inside the handler.

    Args:
        every_n_train_steps: also save every this many optimizer steps (0: only at
            validations, the end of fit and on a signal).
    """

    def __init__(self, every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1
        self._seen_step = -1
        self.last_saved: str | None = None  # the newest last.ckpt this run wrote

    def path(self, trainer: pl.Trainer) -> Path | None:
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        return Path(dirpath) / LAST if dirpath else None

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Write last.ckpt now (on every rank: saving is a collective under DDP)."""
        path = self.path(trainer)
        if path is None:
            rank_zero_warn("LastCheckpoint: no ModelCheckpoint directory configured; last.ckpt not written")
            return None
        trainer.save_checkpoint(path, weights_only=False)  # the full state: resume is exact
        self._saved_step = trainer.global_step
        self.last_saved = str(path)
        return path

    # -- taking the signal handlers back from Lightning for each stage -----------------------------
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.take_over()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.take_over()
        STOP.defer(True)
        self._seen_step = trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.take_over()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.take_over()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.take_over()

    # -- saving -----------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._seen_step:  # inside gradient accumulation: no step boundary yet
            return
        self._seen_step = step
        signum = agreed_signal(trainer)
        if signum:
            self.stop(trainer, signum)
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self._saved_step:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)
        STOP.defer(False)  # a signal that came during the last steps is acted on by train.py

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        STOP.defer(False)

    def stop(self, trainer: pl.Trainer, signum: int) -> None:
        """Save last.ckpt of this step (unless it was just saved) and end fit on every rank."""
        path = self.path(trainer) if self._saved_step == trainer.global_step else self.save(trainer)
        raise StoppedBySignal(signum, trainer.global_step, str(path) if path else None)


def agreed_signal(trainer: pl.Trainer) -> int:
    """The signal any rank received (0: none); under DDP every rank gets the same answer.

    Lightning's ``received_sigterm`` counts too, for runs without ``train.py``'s handler.
    """
    local = int(STOP.pending or (signal.SIGTERM if trainer.received_sigterm else 0))
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    flag = torch.tensor([local], dtype=torch.int32, device=trainer.strategy.root_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # SIGTERM (15) wins over SIGINT (2)
    return int(flag.item())
