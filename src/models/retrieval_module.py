"""LRA Retrieval: a dual encoder that classifies a pair of documents.

The shared encoder reads each document on its own; the pooled vectors ``X0`` and ``X1`` are
combined as ``[X0, X1, X0 * X1, X0 - X1]`` (the LRA harness's matching features) and classified
by Linear(4 dim, hidden) -> ReLU -> Linear(hidden, classes). The difference term makes the
head order-aware: swapping the documents may change the prediction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from src.models.components.encoder import TransformerEncoder
from src.models.components.heads import pool
from src.models.lra_module import SequenceClassifier


class RetrievalClassifier(SequenceClassifier):
    """``SequenceClassifier`` with a two-document input and the matching head.

    Batches carry ``input_ids``/``attention_mask`` and ``input_ids_1``/``attention_mask_1``.
    Arguments as in ``SequenceClassifier`` (``head_hidden`` defaults to 2 x encoder dim); only
    the default of ``num_classes`` differs: a pair matches or not.
    """

    head_features: ClassVar[int] = 4  # [X0, X1, X0 * X1, X0 - X1]

    def __init__(self, encoder: TransformerEncoder, num_classes: int = 2, **kwargs: Any) -> None:
        super().__init__(encoder, num_classes, **kwargs)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled ``[B, dim]`` vector of one document."""
        return pool(self.encoder(input_ids, attention_mask), attention_mask, self.hparams.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                input_ids_1: torch.Tensor, attention_mask_1: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` of the pairs."""
        x0 = self.embed(input_ids, attention_mask)
        x1 = self.embed(input_ids_1, attention_mask_1)
        return self.head(torch.cat([x0, x1, x0 * x1, x0 - x1], dim=-1))

    def step_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"],
                      batch["input_ids_1"], batch["attention_mask_1"])
        return F.cross_entropy(logits.float(), batch["labels"]), logits, batch["labels"]
