"""The shared encoder: shapes, gradients, masks and length limits."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from src.models.components.attention import SoftmaxAttention, YOSOAttention
from src.models.components.encoder import TransformerEncoder


def toy_batch(batch=3, length=21, vocab=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 15:] = False
    ids[~mask] = 0
    return ids, mask


@pytest.mark.parametrize("attention", [
    SoftmaxAttention,
    partial(YOSOAttention, num_hashes=8, hash_code_len=6),
    partial(YOSOAttention, expectation=True, hash_code_len=6),
    partial(YOSOAttention, num_hashes=8, hash_code_len=6, conv_window=5),
], ids=["softmax", "yoso-m", "yoso-e", "yoso-c"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_forward_backward_reaches_every_parameter(attention, norm_first):
    ids, mask = toy_batch()
    encoder = TransformerEncoder(
        vocab_size=17, max_length=32, dim=16, depth=2, num_heads=2, head_dim=8, ffn_dim=32,
        attention=attention, num_segments=2, norm_first=norm_first,
    )
    segments = torch.zeros_like(ids)
    segments[:, 10:] = 1
    hidden = encoder(ids, mask, segments)
    assert hidden.shape == (3, 21, 16)
    assert torch.isfinite(hidden).all()
    hidden[mask].pow(2).mean().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None, name
        if name != "token_embedding.weight":
            assert param.grad.abs().sum() > 0, name


def test_padding_does_not_change_real_token_states():
    ids, mask = toy_batch(batch=1)
    encoder = TransformerEncoder(vocab_size=17, max_length=64, dim=16, depth=2, num_heads=2,
                                 head_dim=8, ffn_dim=32, attention=SoftmaxAttention).eval()
    short = encoder(ids[:, :15], mask[:, :15])
    padded_ids = torch.cat([ids[:, :15], torch.zeros(1, 30, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask[:, :15], torch.zeros(1, 30, dtype=torch.bool)], dim=1)
    longer = encoder(padded_ids, padded_mask)
    torch.testing.assert_close(longer[:, :15], short, rtol=1e-5, atol=1e-5)


def test_too_long_input_is_a_clear_error():
    encoder = TransformerEncoder(vocab_size=17, max_length=8, attention=SoftmaxAttention, dim=16, depth=1,
                                 num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="max_length"):
        encoder(torch.ones(1, 9, dtype=torch.long))


def test_padding_embedding_is_zero_and_a_user_attention_class_works():
    """Any nn.Module with the (num_heads, head_dim) constructor head plugs in unregistered."""

    class MeanOfValues(torch.nn.Module):
        def __init__(self, num_heads: int, head_dim: int, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, q, k, v, mask):
            weights = mask[:, None, :, None].to(v.dtype)
            mean = (v * weights).sum(2, keepdim=True) / weights.sum(2, keepdim=True)
            return self.scale * mean.expand_as(q)

    encoder = TransformerEncoder(vocab_size=17, max_length=32, attention=partial(MeanOfValues, scale=2.0),
                                 dim=16, depth=1, num_heads=2, head_dim=8)
    assert encoder.token_embedding.weight[0].abs().sum() == 0
    assert encoder.layers[0].attention.attention.scale == 2.0
    ids, mask = toy_batch()
    assert encoder(ids, mask).shape == (3, 21, 16)


def test_sincos_2d_positions_are_sines_of_row_and_column():
    side, dim = 8, 16
    encoder = TransformerEncoder(vocab_size=5, max_length=side * side, attention=SoftmaxAttention, dim=dim,
                                 depth=1, num_heads=2, head_dim=8, ffn_dim=32, position_init="sincos_2d")
    table = encoder.position_embedding.weight.detach().double()
    for r, c in ((0, 0), (3, 5), (7, 2)):
        row = table[r * side + c]
        for k in range(dim // 4):
            w = (math.pi / 2) * side ** (-k / (dim // 4))
            expected = [math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)]
            got = [row[part * dim // 4 + k].item() for part in range(4)]
            assert got == pytest.approx(expected, abs=1e-6)
    # neighbours start closer than far pixels: the prior the option exists for
    distance = torch.cdist(table[None], table[None])[0]
    assert distance[3 * side + 3, 3 * side + 4] < distance[3 * side + 3, 7 * side + 7]
    assert encoder.position_embedding.weight.requires_grad  # a start, not a fixed table


def test_sincos_2d_needs_a_square_image_and_a_dim_of_four_parts():
    with pytest.raises(ValueError, match="max_length a square.*max_length=60"):
        TransformerEncoder(vocab_size=5, max_length=60, attention=SoftmaxAttention, dim=16, depth=1,
                           num_heads=2, head_dim=8, ffn_dim=32, position_init="sincos_2d")
    with pytest.raises(ValueError, match="position_init must be one of"):
        TransformerEncoder(vocab_size=5, max_length=64, attention=SoftmaxAttention, dim=16, depth=1,
                           num_heads=2, head_dim=8, ffn_dim=32, position_init="sine")
