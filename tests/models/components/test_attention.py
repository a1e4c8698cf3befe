"""The public attention modules: contract of shapes, masks, dtypes and variants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from src.models.components.attention import SoftmaxAttention, YOSOAttention


def inputs(b=2, h=2, n=33, d=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(b, n, dtype=torch.int64)
    mask[0, n // 2 :] = 0
    return q, k, v, mask


def yoso_variants(h: int, d: int):
    return {
        "yoso-m": YOSOAttention(h, d, num_hashes=16, hash_code_len=6),
        "yoso-e": YOSOAttention(h, d, hash_code_len=6, expectation=True),
        "yoso-c": YOSOAttention(h, d, num_hashes=16, hash_code_len=6, conv_window=5),
        "yoso-fast": YOSOAttention(h, d, num_hashes=16, hash_code_len=6, hashing="fast"),
        "softmax": SoftmaxAttention(h, d),
    }


@pytest.mark.parametrize("n", [1, 31, 33, 1000])
@pytest.mark.parametrize("d", [1, 24, 40])
def test_any_length_and_head_dim(n, d):
    q, k, v, mask = inputs(n=n, d=d)
    if n == 1:
        mask[0] = 0
    for name, module in yoso_variants(2, d).items():
        out = module(q, k, v, mask)
        assert out.shape == q.shape, name
        assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("name", ["yoso-m", "yoso-e", "yoso-c", "yoso-fast", "softmax"])
def test_masked_keys_never_influence_outputs(name):
    q, k, v, mask = inputs(seed=1)
    module = yoso_variants(2, 24)[name]
    padded = (mask == 0)[:, None, :, None]
    torch.manual_seed(5)
    before = module(q, k, v, mask)
    noise = torch.randn_like(k) * 10
    torch.manual_seed(5)
    after = module(q, torch.where(padded, noise, k), torch.where(padded, -noise, v), mask)
    torch.testing.assert_close(before, after)
    if name != "yoso-c":  # the conv part is defined at every position
        assert before.permute(0, 2, 1, 3)[mask == 0].abs().max() == 0


@pytest.mark.parametrize("name", ["yoso-m", "yoso-e", "softmax"])
def test_all_padding_rows_are_zero_not_nan(name):
    q, k, v, mask = inputs(seed=2)
    mask[1] = 0
    out = yoso_variants(2, 24)[name](q, k, v, mask)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0


def test_zero_estimate_row_normalises_to_zero():
    """A query that collides with no key gets a zero row, never NaN."""
    d = 8
    q = torch.zeros(1, 1, 2, d)
    q[..., 0] = 1
    k = -q.clone()  # antipodal: never in the same bucket
    v = torch.randn(1, 1, 2, d)
    out = YOSOAttention(1, d, num_hashes=4, hash_code_len=8)(q, k, v, torch.ones(1, 2))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["yoso-m", "yoso-e", "yoso-c"])
def test_half_precision_inputs(dtype, name):
    q, k, v, mask = inputs(seed=3, dtype=dtype)
    module = yoso_variants(2, 24)[name].to(dtype)
    torch.manual_seed(7)
    out = module(q, k, v, mask)
    assert out.dtype == dtype
    torch.manual_seed(7)
    full = module.float()(q.float(), k.float(), v.float(), mask)
    # Same hashes: the only difference is the input/output rounding.
    torch.testing.assert_close(out.float(), full, rtol=0.05, atol=0.05)


def test_non_contiguous_inputs_match_contiguous():
    q, k, v, mask = inputs(seed=4)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not any(t.is_contiguous() for t in strided)
    module = YOSOAttention(2, 24, num_hashes=8, hash_code_len=6, conv_window=3)
    torch.manual_seed(9)
    want = module(q, k, v, mask)
    torch.manual_seed(9)
    got = module(*strided, mask)
    torch.testing.assert_close(got, want)


def test_yoso_c_adds_depthwise_conv_of_masked_values():
    q, k, v, mask = inputs(seed=5)
    window = 7
    module = YOSOAttention(2, 24, num_hashes=8, hash_code_len=6, conv_window=window)
    plain = YOSOAttention(2, 24, num_hashes=8, hash_code_len=6)
    torch.manual_seed(3)
    got = module(q, k, v, mask)
    torch.manual_seed(3)
    attention_part = plain(q, k, v, mask)
    filters = module.conv.weight.detach()  # [H, window]
    masked = v * mask[:, None, :, None]
    b, h, n, d = v.shape
    seqs = masked.permute(0, 3, 1, 2).reshape(b * d, h, n)  # convolve along n per head
    conv = F.conv1d(seqs, filters[:, None, :], padding=window // 2, groups=h)
    conv = conv.reshape(b, d, h, n).permute(0, 2, 3, 1)
    torch.testing.assert_close(got, attention_part + conv, rtol=1e-5, atol=1e-5)


def test_conv_window_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        YOSOAttention(2, 8, hash_code_len=6, conv_window=4)


def test_softmax_matches_manual_masked_softmax():
    q, k, v, mask = inputs(seed=6)
    out = SoftmaxAttention(2, 24)(q, k, v, mask)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    want = torch.softmax(scores, dim=-1) @ v * mask[:, None, :, None]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_hash_code_len_is_required():
    """tau belongs to the task: a config that lost it must fail, not train with a default."""
    with pytest.raises(TypeError, match="hash_code_len"):
        YOSOAttention(2, 8, num_hashes=4)


def test_gradients_flow_through_every_variant():
    q, k, v, mask = inputs(seed=8)
    for name, module in yoso_variants(2, 24).items():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        module(*leaves, mask).sum().backward()
        for t in leaves:
            assert torch.isfinite(t.grad).all(), name
            assert t.grad.abs().sum() > 0, name
