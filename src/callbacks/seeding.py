"""Per-rank, per-batch random streams: distinct across DDP ranks, replayable after a resume."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from src.data.samplers import derived_seed


def reseed(*parts: object) -> int:
    """Seed torch (CPU and CUDA), NumPy and ``random`` from a hash of ``parts``; returns the seed."""
    seed = derived_seed(*parts)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return seed


class BatchSeeds(Callback):
    """Reseed the global RNGs before every batch from ``(seed, rank, stage, epoch/step, batch)``.

    * Weights start equal on every rank: ``seed_everything`` runs with the same
      seed everywhere before the model is built (and DDP broadcasts rank 0's
      weights anyway).
    * Dropout masks and YOSO's hash directions (drawn from torch's global RNG)
      must differ between ranks, or the ranks would repeat each other's noise;
      the rank is part of the key.
    * A resumed run draws exactly what the uninterrupted run drew: every batch's
      stream is a function of its position only, so there is no RNG state to
      save, and validations (which also draw hashes) cannot shift later draws.

    Args:
        seed: base seed; default the run's ``seed_everything`` value (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        reseed(self.seed, trainer.global_rank, "train", trainer.current_epoch, batch_idx, trainer.global_step)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        reseed(self.seed, trainer.global_rank, "val", trainer.global_step, dataloader_idx, batch_idx)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        reseed(self.seed, trainer.global_rank, "test", dataloader_idx, batch_idx)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        reseed(self.seed, trainer.global_rank, "predict", dataloader_idx, batch_idx)
