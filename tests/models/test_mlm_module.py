"""Masked-LM module: the LM head is tied to the input embedding; the loss covers the targets only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.data.mlm.mlm_datamodule import IGNORE_INDEX
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
