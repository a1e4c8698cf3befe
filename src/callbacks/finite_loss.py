"""Stop a run at the first NaN or infinite training loss, instead of training on garbage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossCheck(Callback):
    """Raise ``NonFiniteLossError`` naming the step and the last good checkpoint when the loss is not finite.

    Runs in ``on_train_batch_end`` (``train.py`` puts it before the callbacks
    that write checkpoints, so a damaged state is never saved). Under DDP the
    decision is reduced over the ranks (any rank's loss), so all ranks stop
    together instead of one waiting for the others in the next all-reduce.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        value = loss.detach().float().flatten()[:1].tolist()
        raise NonFiniteLossError(
            f"training loss is {value[0] if value else 'non-finite'} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {batch_idx}, on some rank); stopped instead of "
            f"training on. Last good checkpoint: {last_good_checkpoint(trainer)}. Lower "
            "model.learning_rate, raise model.warmup_steps or inspect this batch's data, then "
            "resume with --ckpt_path <that checkpoint>."
        )


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    """The newest ``.ckpt`` in the run's checkpoint folders, or a note that there is none yet."""
    folders = {cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
    files = [path for folder in folders for path in Path(folder).glob("*.ckpt") if path.is_file()]
    if not files:
        return "none written yet (this run has no checkpoint to go back to)"
    return str(max(files, key=os.path.getmtime))
