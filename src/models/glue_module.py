"""GLUE fine-tuning: the shared encoder, a head on the [CLS] vector, each task's official metrics.

Metrics (torchmetrics): CoLA Matthews correlation (``mcc``); MRPC and QQP F1
and accuracy; STS-B Pearson and Spearman; the others accuracy. ``score`` is
GLUE's per-task number (the mean of the task's metrics; MNLI: matched
accuracy) and picks the best checkpoint for every task alike. MNLI's
mismatched dev set logs under the stages ``val_mm`` / ``test_mm``.
After testing, ``train.py`` predicts the test files; this module writes them
as the leaderboard's ``<TASK>.tsv`` (``index<TAB>prediction``) into the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryMatthewsCorrCoef, MulticlassAccuracy
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from src.data.glue.tasks import GlueTask, get_task, prediction_strings
from src.data.tokenizer import store_tokenizer
from src.models.base_module import TaskModule
from src.models.components.encoder import TransformerEncoder
from src.models.components.heads import POOLINGS, ClassificationHead, pool


def task_metric(name: str, num_outputs: int) -> Metric:
    """One official GLUE metric by short name."""
    if name == "acc":
        return MulticlassAccuracy(num_outputs, average="micro")
    if name == "f1":
        return BinaryF1Score()
    if name == "mcc":
        return BinaryMatthewsCorrCoef()
    if name == "pearson":
        return PearsonCorrCoef()
    if name == "spearman":
        return SpearmanCorrCoef()
    raise ValueError(f"unknown GLUE metric {name!r}")


def task_metrics(spec: GlueTask) -> MetricCollection:
    """The task's metrics plus ``score``, their mean (own metric instances: each is updated once)."""
    metrics = {name: task_metric(name, spec.num_outputs) for name in spec.metrics}
    parts = [task_metric(name, spec.num_outputs) for name in spec.metrics]
    score = parts[0]
    for part in parts[1:]:
        score = score + part
    metrics["score"] = score / len(parts) if len(parts) > 1 else score
    return MetricCollection(metrics)


class GlueClassifier(TaskModule):
    """Encoder -> pooled [CLS] -> Linear -> ReLU -> Linear: class logits, or one score for STS-B.

    Args:
        encoder: the shared ``TransformerEncoder``; left out when ``init_from`` gives it (the
            source's architecture, segments included: 2 from configs/glue/encoders/small.yaml,
            1 from ``uw-madison/yoso-4096``, whose inputs then carry no segment ids).
        task: the GLUE task (linked from the DataModule by ``train.py``).
        num_classes: outputs (linked: classes, 1 for STS-B).
        pooling: ``cls`` (linked: the data prepends the tokenizer's ``<s>``/``[CLS]``).
        head_hidden: hidden width of the head (default: the encoder's dim).
        **kwargs: ``TaskModule``'s optimizer, schedule and ``init_from``; here ``init_from`` is
            the MLM checkpoint whose encoder starts this run (its tokenizer reaches the
            DataModule through the same value). configs/glue/_base.yaml states the fine-tuning
            ``learning_rate`` and ``warmup_steps``.
    """

    monitor: ClassVar[tuple[str, str]] = ("val/score", "max")

    def __init__(
        self,
        encoder: TransformerEncoder,
        task: str | None = None,
        num_classes: int = 2,
        pooling: str = "cls",
        head_hidden: int | None = None,
        **kwargs: Any,
    ) -> None:
        if task is None:
            raise ValueError("GlueClassifier needs a task (train.py links it from data.init_args.task)")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.spec = get_task(task)
        if num_classes != self.spec.num_outputs:
            raise ValueError(f"{self.spec.name} has {self.spec.num_outputs} outputs, "
                             f"got num_classes={num_classes}")
        suffixes = tuple(s for s in self.spec.dev if s)
        extra = (f"{stage}{s}" for s in suffixes for stage in ("val", "test"))
        self.stages = ("train", "val", "test", *extra)
        super().__init__(encoder, **kwargs)
        self.head = ClassificationHead(encoder.dim, head_hidden or encoder.dim, num_classes)
        self._predictions: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def build_metrics(self) -> MetricCollection:
        return task_metrics(self.spec)

    @property
    def regression(self) -> bool:
        return self.spec.labels is None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, classes]`` (STS-B: ``[B, 1]`` scores)."""
        hidden = self.encoder(input_ids, attention_mask, segment_ids)
        return self.head(pool(hidden, attention_mask, self.hparams.pooling)).float()

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class ids, or the scores for STS-B."""
        return outputs.squeeze(-1) if self.regression else outputs.argmax(-1)

    def step_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self(batch["input_ids"], batch["attention_mask"], batch.get("segment_ids"))
        labels = batch["labels"]
        if self.regression:
            loss = F.mse_loss(outputs.squeeze(-1), labels)
        else:
            loss = F.cross_entropy(outputs, labels)
        return loss, self.predictions(outputs), labels

    def _stage(self, stage: str, dataloader_idx: int) -> str:
        return f"{stage}{tuple(self.spec.dev)[dataloader_idx]}"

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self.model_step(batch, self._stage("val", dataloader_idx))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.model_step(batch, self._stage("test", dataloader_idx))

    # -- leaderboard files ---------------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._predictions = {}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self(batch["input_ids"], batch["attention_mask"], batch.get("segment_ids"))
        found = self._predictions.setdefault(dataloader_idx, [])
        found.append((batch["indices"].cpu(), self.predictions(outputs).cpu()))

    def on_predict_epoch_end(self) -> None:
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        for number, split in enumerate(self.spec.test.values()):
            indices, values = self._gathered(number)
            if self.trainer.is_global_zero:
                path = write_leaderboard(folder / split.leaderboard, self.spec, indices, values)
                rank_zero_info(f"Wrote {len(indices)} test predictions to {path}")

    def _gathered(self, dataloader_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """All processes' predictions, each index once (DDP's sampler repeats some to even out)."""
        parts = self._predictions.get(dataloader_idx, [])
        indices = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
        values = torch.cat([v for _, v in parts]) if parts else torch.zeros(0)
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (indices, values))
            indices = torch.cat([i for i, _ in gathered])
            values = torch.cat([v for _, v in gathered])
        order = np.argsort(indices.numpy(), kind="stable")
        indices, values = indices.numpy()[order], values.numpy()[order]
        keep = np.r_[True, indices[1:] != indices[:-1]] if len(indices) else np.zeros(0, dtype=bool)
        return indices[keep], values[keep]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_tokenizer(checkpoint, self.trainer.datamodule)


def write_leaderboard(path: Path, spec: GlueTask, indices: np.ndarray, values: np.ndarray) -> Path:
    """``index<TAB>prediction`` rows in index order: GLUE's submission format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{int(i)}\t{p}" for i, p in zip(indices, prediction_strings(spec, values))]
    path.write_text("\n".join(["index\tprediction", *rows]) + "\n")
    return path
