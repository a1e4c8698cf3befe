"""The LRA classifier: pooling ignores padding, the head, the loss and argument checks."""

from __future__ import annotations

import pytest
import torch

from src.models.components.encoder import TransformerEncoder
from src.models.lra_module import SequenceClassifier, masked_mean


def encoder(**overrides) -> TransformerEncoder:
    options = dict(vocab_size=11, max_length=40, dim=16, depth=1, num_heads=2, head_dim=8, ffn_dim=32,
                   dropout=0.0, attention="softmax")
    options.update(overrides)
    return TransformerEncoder(**options)


def test_masked_mean_ignores_padding():
    hidden = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(masked_mean(hidden, mask), hidden[:, :2].mean(1))
    assert torch.equal(masked_mean(hidden, torch.zeros(1, 4, dtype=torch.bool)), torch.zeros(1, 3))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_logits_do_not_depend_on_padding_length(pooling):
    model = SequenceClassifier(encoder(prepend_cls=pooling == "cls"), num_classes=5, pooling=pooling).eval()
    ids = torch.randint(1, 11, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    padded_ids = torch.cat([ids, torch.zeros(2, 7, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.bool)], 1)
    logits = model(ids, mask)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model(padded_ids, padded_mask), logits, rtol=1e-5, atol=1e-5)


def test_training_step_gives_finite_loss_and_gradients():
    model = SequenceClassifier(encoder(attention="yoso", attention_options={"num_hashes": 4}), num_classes=3)
    batch = {
        "input_ids": torch.randint(1, 11, (4, 12)),
        "attention_mask": torch.ones(4, 12, dtype=torch.bool),
        "labels": torch.tensor([0, 1, 2, 1]),
    }
    loss = model.model_step(batch, "val")
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(encoder(), pooling="max")
    with pytest.raises(ValueError, match="prepend_cls"):
        SequenceClassifier(encoder(), pooling="cls")
    with pytest.raises(ValueError, match="optimizer"):
        SequenceClassifier(encoder(), optimizer="sgd")
