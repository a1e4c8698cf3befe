"""The Retrieval dual encoder: one shared encoder, the [X0, X1, X0*X1, X0-X1] head, masks honoured."""

from __future__ import annotations

import pytest
import torch

from src.models.components.attention import SoftmaxAttention
from src.models.components.encoder import TransformerEncoder
from src.models.components.heads import ClassificationHead
from src.models.retrieval_module import RetrievalClassifier


def model(pooling: str = "mean") -> RetrievalClassifier:
    torch.manual_seed(0)
    encoder = TransformerEncoder(vocab_size=257, max_length=32, attention=SoftmaxAttention, dim=16, depth=1,
                                 num_heads=2, head_dim=8, ffn_dim=32, dropout=0.0)
    return RetrievalClassifier(encoder, num_classes=2, pooling=pooling, head_hidden=24).eval()


def documents(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 257, (batch, length), generator=g), torch.ones(batch, length, dtype=torch.bool)


def test_head_reads_the_four_matching_features_of_one_shared_encoder():
    net = model()
    (a, mask_a), (b, mask_b) = documents(3, 7, 0), documents(3, 11, 1)
    assert net.head[0].in_features == 4 * 16 and net.head[0].out_features == 24
    owned = sum(p.numel() for p in net.encoder.parameters()) + sum(p.numel() for p in net.head.parameters())
    assert sum(p.numel() for p in net.parameters()) == owned  # one shared encoder, no second copy
    with torch.no_grad():
        x0 = net.encoder(a, mask_a).mean(1)  # no padding: the plain mean is the masked mean
        x1 = net.encoder(b, mask_b).mean(1)
        features = torch.cat([x0, x1, x0 * x1, x0 - x1], dim=-1)
        expected = net.head[2](torch.relu(net.head[0](features)))
        logits = net(a, mask_a, b, mask_b)
    assert logits.shape == (3, 2)
    torch.testing.assert_close(logits, expected)


def test_the_head_is_order_aware():
    net = model()
    (a, mask_a), (b, mask_b) = documents(4, 9, 2), documents(4, 9, 3)
    with torch.no_grad():
        forward, swapped = net(a, mask_a, b, mask_b), net(b, mask_b, a, mask_a)
    assert not torch.allclose(forward, swapped, atol=1e-4)  # X0 - X1 flips sign when swapped


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_either_document_changes_nothing(pooling):
    net = model(pooling)
    (a, mask_a), (b, mask_b) = documents(2, 6, 4), documents(2, 10, 5)
    pad = torch.zeros(2, 5, dtype=a.dtype)
    off = torch.zeros(2, 5, dtype=torch.bool)
    with torch.no_grad():
        plain = net(a, mask_a, b, mask_b)
        padded = net(torch.cat([a, pad], 1), torch.cat([mask_a, off], 1), torch.cat([b, pad], 1),
                     torch.cat([mask_b, off], 1))
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)


def test_a_training_step_reaches_encoder_and_head():
    net = model().train()
    (a, mask_a), (b, mask_b) = documents(4, 8, 6), documents(4, 5, 7)
    batch = {"input_ids": a, "attention_mask": mask_a, "input_ids_1": b, "attention_mask_1": mask_b,
             "labels": torch.tensor([0, 1, 1, 0])}
    loss, preds, target = net.step_outputs(batch)
    loss.backward()
    assert torch.isfinite(loss) and preds.shape == (4, 2) and target.tolist() == [0, 1, 1, 0]
    assert net.encoder.token_embedding.weight.grad.abs().sum() > 0
    assert net.encoder.layers[0].attention.query.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head.parameters())
    assert net.hparams.head_hidden == 24 and net.hparams.num_classes == 2


def test_the_head_is_built_once_right_after_the_encoder():
    """No throw-away SequenceClassifier head: the head's weights are the next RNG draws."""
    net = model()
    torch.manual_seed(0)
    TransformerEncoder(vocab_size=257, max_length=32, attention=SoftmaxAttention, dim=16, depth=1,
                       num_heads=2, head_dim=8, ffn_dim=32, dropout=0.0)
    expected = ClassificationHead(4 * 16, 24, 2)
    for built, drawn in zip(net.head.parameters(), expected.parameters()):
        torch.testing.assert_close(built, drawn, rtol=0, atol=0)


def test_hyperparameters_hold_every_argument_for_the_checkpoint():
    """``**kwargs`` reach ``TaskModule``; ``save_hyperparameters`` still records them (defaults too)."""
    net = model()
    hparams = {k: v for k, v in net.hparams.items() if k != "encoder"}
    assert hparams == {"num_classes": 2, "pooling": "mean", "head_hidden": 24, "optimizer": "adam",
                       "learning_rate": 1e-4, "weight_decay": 0.0, "adam_eps": 1e-8, "warmup_steps": 1000,
                       "schedule": "linear", "init_from": None, "extend_positions_to": None}
    tuned = RetrievalClassifier(net.encoder, optimizer="adamw", learning_rate=3e-4, schedule="cosine")
    assert (tuned.hparams.optimizer, tuned.hparams.learning_rate, tuned.hparams.schedule) == \
        ("adamw", 3e-4, "cosine")
