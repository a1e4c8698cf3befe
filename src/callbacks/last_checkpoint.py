"""Keep ``last.ckpt`` the newest state of a run: every N steps, at the end of fit and on SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

LAST = "last.ckpt"


class LastCheckpoint(Callback):
    """Write ``<checkpoint dir>/last.ckpt`` periodically, when fit ends, and before exiting on SIGTERM.

    ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only at validations;
    a run killed between two of them, or one whose last steps come after the
    last validation, would lose that work. With this callback a resumed run
    (``--ckpt_path last``) loses at most ``every_n_train_steps`` steps.

    SIGTERM (a cluster's pre-emption): Lightning notes the signal; in one process
    this callback saves after the current batch and stops with
    ``SIGTERMException``. Under DDP Lightning raises that exception on every rank
    at the start of the next batch (it broadcasts rank 0's flag), and this
    callback saves in ``on_exception`` on all ranks.

    Args:
        every_n_train_steps: also save every this many optimizer steps (0: only at
            validations, the end of fit and SIGTERM).
    """

    def __init__(self, every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1
        self.saved_on_sigterm: str | None = None

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
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.world_size == 1 and trainer.received_sigterm:
            self._save_for_sigterm(trainer)
            raise SIGTERMException()
        step = trainer.global_step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self._saved_step:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_on_sigterm is None:
            self._save_for_sigterm(trainer)

    def _save_for_sigterm(self, trainer: pl.Trainer) -> None:
        path = self.save(trainer)
        self.saved_on_sigterm = str(path) if path else ""
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path {path}")
