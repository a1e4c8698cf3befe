"""LightningModule for Long Range Arena sequence classification.

The encoder is injected (a config names its class and arguments), so the
module only adds what the task needs: pooling, the MLP head, cross-entropy,
accuracy per stage, the optimizer and its warm-up/decay schedule.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from src.models.components.encoder import TransformerEncoder
from src.models.schedules import warmup_then_decay

POOLINGS = ("mean", "cls")
STAGES = ("train", "val", "test")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``[B, n, dim]`` over real tokens only (padding must not dilute the average)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SequenceClassifier(pl.LightningModule):
    """Encoder -> pooled vector -> Linear(dim, hidden) -> ReLU -> Linear(hidden, classes).

    Args:
        encoder: the shared ``TransformerEncoder`` (``prepend_cls=True`` for CLS pooling).
        num_classes: number of labels (linked from the DataModule by ``train.py``).
        pooling: ``"mean"`` over real tokens or ``"cls"``.
        head_hidden: hidden width of the MLP head (default: 2 x encoder dim, the LRA FFN width).
        optimizer: ``"adam"`` or ``"adamw"``.
        learning_rate, weight_decay: optimizer settings (paper: Adam 1e-4, no decay).
        warmup_steps: linear warm-up steps; then ``schedule`` until ``trainer.max_steps``.
        schedule: ``"linear"`` decay to 0, ``"cosine"`` or ``"constant"``.
    """

    def __init__(
        self,
        encoder: TransformerEncoder,
        num_classes: int = 10,
        pooling: str = "mean",
        head_hidden: int | None = None,
        optimizer: str = "adam",
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        schedule: str = "linear",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "cls" and not encoder.prepend_cls:
            raise ValueError("pooling='cls' needs an encoder built with prepend_cls=True")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        self.save_hyperparameters()  # via train.py the encoder is stored as its config
        self.encoder = encoder
        hidden = head_hidden or 2 * encoder.dim
        self.head = nn.Sequential(
            nn.Linear(encoder.dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        # One metric object per stage so that DDP reductions never mix stages.
        # (ModuleDict keys may not shadow nn.Module attributes such as `train`.)
        self.losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})
        self.accuracies = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in STAGES}
        )
        self.best_val_accuracy = MaxMetric()
        self._batch_started: float | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        hidden = self.encoder(input_ids, attention_mask)
        if self.hparams.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            if self.encoder.prepend_cls:
                hidden = hidden[:, 1:]
            pooled = masked_mean(hidden, attention_mask)
        return self.head(pooled)

    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Loss and metric updates shared by train/val/test."""
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        loss_metric = self.losses[f"{stage}_loss"]
        accuracy = self.accuracies[f"{stage}_acc"]
        loss_metric(loss)
        accuracy(logits, batch["labels"])
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss_metric, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.best_val_accuracy(self.accuracies["val_acc"].compute())
        self.log("val/acc_best", self.best_val_accuracy.compute(), prog_bar=True, sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log real (non-padding) tokens per second of this process."""
        if self._batch_started is None:
            return
        elapsed = time.perf_counter() - self._batch_started
        tokens = float(batch["attention_mask"].sum())
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), on_step=True, on_epoch=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = OPTIMIZERS[self.hparams.optimizer](
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_then_decay(optimizer, self.hparams.warmup_steps, total, self.hparams.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
