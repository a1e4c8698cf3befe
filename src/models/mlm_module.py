"""Masked-LM pre-training: the shared encoder plus a BERT LM head tied to the input embeddings."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from src.data.mlm.mlm_datamodule import IGNORE_INDEX
from src.data.tokenizer import store_tokenizer
from src.models.base_module import TaskModule
from src.models.components.encoder import TransformerEncoder, make_activation


class LMHead(nn.Module):
    """Linear -> GELU -> LayerNorm, then scores against the token embedding matrix (tied) plus a bias.

    ``norm_eps`` and ``activation`` follow the encoder's (``MaskedLanguageModel`` passes them),
    so a model with BERT's / ``transformers``' LayerNorm epsilon is held exactly.
    """

    def __init__(self, embedding: nn.Embedding, norm_eps: float = 1e-5, activation: str = "gelu") -> None:
        super().__init__()
        vocab_size, dim = embedding.weight.shape
        self.transform = nn.Sequential(nn.Linear(dim, dim), make_activation(activation),
                                       nn.LayerNorm(dim, eps=norm_eps))
        self.embedding = embedding  # shared, not copied: the decoder is the input embedding
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.embedding.weight, self.bias)


class MaskedTokenPerplexity(Perplexity):
    """torchmetrics' perplexity for logits ``[N, V]`` of the masked tokens only (it expects ``[B, n, V]``)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.float().unsqueeze(0), target.unsqueeze(0))


class MaskedLanguageModel(TaskModule):
    """Predict the masked tokens; logs loss, masked-token accuracy (``acc``) and perplexity (``ppl``).

    The checkpoint also carries the data's tokenizer (``tokenizer_json``), so GLUE runs
    started with ``init_from`` use the same vocabulary.

    Args:
        encoder: the shared ``TransformerEncoder`` (its vocabulary is linked from the tokenizer).
        **kwargs: ``TaskModule``'s optimizer, schedule and ``init_from``.
    """

    monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")

    def __init__(self, encoder: TransformerEncoder, **kwargs: Any) -> None:
        self.vocab_size = encoder.token_embedding.num_embeddings
        super().__init__(encoder, **kwargs)
        self.lm_head = LMHead(encoder.token_embedding, getattr(encoder, "layer_norm_eps", 1e-5),
                              getattr(encoder, "activation", "gelu"))

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({
            "acc": MulticlassAccuracy(self.vocab_size, average="micro", ignore_index=IGNORE_INDEX),
            "ppl": MaskedTokenPerplexity(ignore_index=IGNORE_INDEX),
        })

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token logits ``[B, n, vocab]`` at every position."""
        return self.lm_head(self.encoder(input_ids, attention_mask))

    def step_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"])
        targets = batch["labels"] != IGNORE_INDEX
        # Score only the masked positions: the vocabulary projection is the costly part.
        logits = self.lm_head(hidden[targets]).float()
        labels = batch["labels"][targets]
        loss = F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0.0
        return loss, logits, labels

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_tokenizer(checkpoint, self.trainer.datamodule)
