"""Long Range Arena sequence classification: the task base plus a pooled MLP head."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from src.models.base_module import TaskModule
from src.models.components.encoder import TransformerEncoder
from src.models.components.heads import POOLINGS, ClassificationHead, pool


class SequenceClassifier(TaskModule):
    """Encoder -> pooled vector -> Linear(dim, hidden) -> ReLU -> Linear(hidden, classes).

    Args:
        encoder: the shared ``TransformerEncoder``.
        num_classes: number of labels (linked from the DataModule by ``train.py``).
        pooling: ``"mean"`` over real tokens, ``"mean_padded"`` (their sum over the fixed padded
            length: the LRA harness) or ``"cls"`` (position 0). Linked from the
            DataModule: ``cls`` exactly when the data prepends a [CLS] token.
        head_hidden: hidden width of the MLP head (default: 2 x encoder dim, the LRA FFN width).
        **kwargs: ``TaskModule``'s optimizer, schedule and ``init_from`` (stated there once).
    """

    # How many pooled ``dim``-vectors the head reads side by side; a subclass that feeds the
    # head more features (Retrieval's document pair) says so here, and the head is built once.
    head_features: ClassVar[int] = 1

    def __init__(
        self,
        encoder: TransformerEncoder,
        num_classes: int = 10,
        pooling: str = "mean",
        head_hidden: int | None = None,
        **kwargs: Any,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        super().__init__(encoder, **kwargs)
        self.head = ClassificationHead(self.head_features * encoder.dim, head_hidden or 2 * encoder.dim,
                                       num_classes)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro")})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, num_classes]``.

        ``position_ids``: the batch is compacted (``compact_masked``): each token's place in the
        full array, whose length (the position table's, ``pad_to``) ``mean_padded`` divides by.
        """
        if position_ids is None:  # the usual call: encoders without position_ids keep working
            hidden = self.encoder(input_ids, attention_mask)
            padded_length = None
        else:
            hidden = self.encoder(input_ids, attention_mask, position_ids=position_ids)
            padded_length = self.encoder.max_length
        return self.head(pool(hidden, attention_mask, self.hparams.pooling, padded_length))

    def step_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))
        return F.cross_entropy(logits.float(), batch["labels"]), logits, batch["labels"]
