"""Masked-LM module: the LM head is tied to the input embedding; the loss covers the targets only;
the unigram baseline is scored at the same targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.data.mlm.mlm_datamodule import IGNORE_INDEX, unigram_log_probs
from src.models.components.attention import SoftmaxAttention
from src.models.components.encoder import TransformerEncoder
from src.models.mlm_module import MaskedLanguageModel


def make() -> MaskedLanguageModel:
    torch.manual_seed(0)
    encoder = TransformerEncoder(40, 12, SoftmaxAttention, dim=8, depth=1, num_heads=2, head_dim=4,
                                 ffn_dim=16, num_segments=2, norm_first=False, padding_id=2)
    return MaskedLanguageModel(encoder, warmup_steps=0)


def test_decoder_is_the_input_embedding():
    model = make()
    assert model.lm_head.embedding.weight is model.encoder.token_embedding.weight
    names = [n for n, _ in model.named_parameters()]
    assert "encoder.token_embedding.weight" in names
    assert not any(n.startswith("lm_head.embedding") for n in names)  # one parameter, not a copy
    model.eval()
    ids = torch.randint(5, 40, (2, 6))
    logits = model(ids, torch.ones(2, 6, dtype=torch.bool))
    assert logits.shape == (2, 6, 40)
    logits.sum().backward()  # the output projection trains the embedding too
    assert model.encoder.token_embedding.weight.grad.abs().sum() > 0


def test_loss_and_metrics_cover_only_the_masked_positions():
    model = make()
    model.eval()
    ids = torch.randint(5, 40, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 7:] = False
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3], labels[1, 5], labels[2, 1] = 11, 12, 13
    loss, logits, targets = model.step_outputs({"input_ids": ids, "attention_mask": mask, "labels": labels})
    full = model(ids, mask)
    picked = full[labels != IGNORE_INDEX]
    assert torch.equal(targets, torch.tensor([11, 12, 13]))
    assert torch.allclose(logits, picked, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(picked, targets))
    metrics = model.metrics["val_metrics"]
    metrics.update(logits, targets)
    values = metrics.compute()
    assert torch.allclose(values["val/ppl"], loss.exp(), rtol=1e-4)
    expected_acc = (picked.argmax(-1) == targets).float().mean()
    assert torch.allclose(values["val/acc"], expected_acc)
    assert model.monitor == ("val/loss", "min")


def test_unigram_baseline_is_the_smoothed_training_distribution_at_the_masked_positions():
    """Closed form on a hand-made corpus of 40 ids: 0-4 are special, 5-39 can be targets (V = 35).

    Training counts of 5..9: 5, 3, 1, 0, 1, none of 10..39 (N = 10); add-one: p = (c + 1) / 45.
    """
    counts = np.zeros(40, dtype=np.int64)
    counts[[5, 6, 7, 8, 9]] = [5, 3, 1, 0, 1]
    counts[[0, 1, 2]] = [100, 100, 50]  # <s>, </s>, padding: never targets, not in the distribution
    model = make()
    special = (0, 1, 2, 3, 4)
    log_probs = unigram_log_probs(counts[:40], special)
    assert torch.isinf(log_probs[list(special)]).all()
    assert torch.allclose(log_probs[5:10].exp(), torch.tensor([6, 4, 2, 1, 2]) / 45)
    assert torch.allclose(log_probs[10:].exp(), torch.full((30,), 1 / 45))  # unseen ids: 1 / (10 + 35)
    assert log_probs[5:].exp().sum().item() == pytest.approx(1.0)
    model.set_unigram(log_probs)

    ids = torch.randint(10, 40, (2, 6))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 1], labels[0, 4], labels[1, 2] = 5, 8, 5  # the targets the fixed val mask chose
    loss = torch.tensor(1.5)
    model.log = lambda *args, **kwargs: None  # outside a Trainer: only the metrics are checked
    model.log_unigram(labels, loss, "val")
    labels2 = torch.full_like(ids, IGNORE_INDEX)
    labels2[1, 0] = 7
    model.log_unigram(labels2, torch.tensor(0.5), "val")
    # four targets: 5, 8, 5 (batch 1), 7 (batch 2)
    expected = (2 * math.log(45 / 6) + math.log(45 / 1) + math.log(45 / 2)) / 4
    assert model.unigram_metrics["val_unigram_loss"].compute().item() == pytest.approx(expected, rel=1e-6)
    gap = expected - (3 * 1.5 + 1 * 0.5) / 4  # the model's loss weighted by its targets, as val/loss is
    assert model.unigram_metrics["val_unigram_gap"].compute().item() == pytest.approx(gap, rel=1e-6)
    with pytest.raises(ValueError, match="vocabulary of 40"):
        model.set_unigram(log_probs[:30])
