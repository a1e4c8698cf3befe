"""Masked-LM pre-training: the shared encoder plus a BERT LM head tied to the input embeddings."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
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

    Validation and test also log the context-free baseline at the same masked positions:
    ``unigram_loss``, the cross-entropy of the training tokens' unigram distribution (add-one
    smoothed; the DataModule's ``unigram_log_probs``), and ``unigram_gap`` = ``unigram_loss`` -
    ``loss`` in nats: above 0 only where the model uses the context. Both are means over the
    masked tokens, weighted as ``loss`` is, so the gap is exactly the difference of the two.

    The checkpoint also carries the data's tokenizer (``tokenizer_json``), so GLUE runs
    started with ``init_from`` use the same vocabulary.

    Args:
        encoder: the shared ``TransformerEncoder`` (its vocabulary is linked from the tokenizer).
        unigram_baseline: log ``unigram_loss`` and ``unigram_gap`` (needs a DataModule with
            ``unigram_log_probs()``, e.g. ``MLMDataModule``; counting the training tokens is one
            pass over them at setup).
        **kwargs: ``TaskModule``'s optimizer, schedule and ``init_from``.
    """

    monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")
    baseline_stages: ClassVar[tuple[str, ...]] = ("val", "test")

    def __init__(self, encoder: TransformerEncoder, unigram_baseline: bool = True, **kwargs: Any) -> None:
        self.vocab_size = encoder.token_embedding.num_embeddings
        super().__init__(encoder, **kwargs)
        self.lm_head = LMHead(encoder.token_embedding, getattr(encoder, "layer_norm_eps", 1e-5),
                              getattr(encoder, "activation", "gelu"))
        self.unigram_metrics = nn.ModuleDict({f"{stage}_{name}": MeanMetric()
                                              for stage in self.baseline_stages
                                              for name in ("unigram_loss", "unigram_gap")})
        # Set from the DataModule at setup; not saved (the checkpoint's weights stay the model's).
        self.register_buffer("unigram_log_probs", None, persistent=False)

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

    def set_unigram(self, log_probs: torch.Tensor) -> None:
        """Use ``log_probs`` (``[vocab]``, the context-free predictor) as the baseline."""
        if log_probs.shape != (self.vocab_size,):
            raise ValueError(f"unigram log-probabilities of shape {tuple(log_probs.shape)} for a vocabulary "
                             f"of {self.vocab_size}: the DataModule's tokenizer is not the encoder's")
        self.unigram_log_probs = log_probs.float().to(self.lm_head.bias.device)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        source = getattr(self.trainer.datamodule, "unigram_log_probs", None)
        if self.hparams.get("unigram_baseline", True) and self.unigram_log_probs is None and callable(source):
            self.set_unigram(source())

    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss = super().model_step(batch, stage)
        if stage in self.baseline_stages and self.unigram_log_probs is not None:
            self.log_unigram(batch["labels"], loss.detach(), stage)
        return loss

    def log_unigram(self, labels: torch.Tensor, loss: torch.Tensor, stage: str) -> None:
        """Score the unigram at this batch's targets; ``loss`` is the model's mean over the same ones."""
        targets = labels[labels != IGNORE_INDEX]
        if not targets.numel():
            return
        unigram = -self.unigram_log_probs[targets].mean()
        weight = float(targets.numel())
        for name, value in (("unigram_loss", unigram), ("unigram_gap", unigram - loss)):
            metric = self.unigram_metrics[f"{stage}_{name}"]
            metric(value, weight=weight)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "unigram_gap",
                     add_dataloader_idx=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_tokenizer(checkpoint, self.trainer.datamodule)
