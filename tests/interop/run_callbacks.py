"""A test-only callback that ``train.py`` runs load with ``--trainer.callbacks+=...``."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class SaveEncoderAtFitStart(Callback):
    """Write the encoder's state, as ``init_from`` loaded it (before any step), to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.encoder.state_dict().items()}
        torch.save(state, self.path)
