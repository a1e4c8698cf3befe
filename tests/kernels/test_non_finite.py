"""NaN/inf in q, k or v: YOSO's affected outputs are NaN exactly where softmax attention's are."""

from __future__ import annotations

import pytest
import torch

from src.kernels import yoso_attention
from src.models.components.attention import SoftmaxAttention

B, H, N, D = 2, 2, 6, 8


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 4:] = False  # the second example has two padded positions
    return q, k, v, mask


def yoso(q, k, v, mask, **kw):
    return yoso_attention(q, k, v, mask, num_hashes=4, hash_code_len=4, backend="reference",
                          generator=torch.Generator().manual_seed(1), **kw)


def nan_rows(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H, N] bool: the real (unpadded) rows that hold a NaN or inf."""
    return (~torch.isfinite(out)).any(-1) & mask[:, None, :]


CASES = [
    ("query", (0, 1, 2), float("nan")),
    ("query", (1, 0, 3), float("inf")),
    ("key", (0, 0, 1), float("nan")),
    ("key", (1, 1, 0), float("-inf")),
    ("value", (1, 0, 2), float("nan")),
    ("value", (0, 1, 5), float("inf")),
]


@pytest.mark.parametrize("expectation", [False, True], ids=["sampling", "expectation"])
@pytest.mark.parametrize(("tensor", "where", "bad"), CASES)
def test_non_finite_input_gives_nan_where_softmax_does(tensor, where, bad, expectation):
    q, k, v, mask = inputs()
    named = {"query": q, "key": k, "value": v}
    named[tensor][where[0], where[1], where[2], 3] = bad
    reference = SoftmaxAttention(H, D)(q, k, v, mask)
    out = yoso(q, k, v, mask, expectation=expectation)
    softmax_bad = nan_rows(reference, mask)
    assert softmax_bad.any()  # the case is not vacuous
    # hand-derived: a query taints its own row; a real key/value every real row of its batch x head
    b, h, n = where
    expected = torch.zeros(B, H, N, dtype=torch.bool)
    if tensor == "query":
        expected[b, h, n] = True
    else:
        expected[b, h] = mask[b]
    got = nan_rows(out, mask)
    assert torch.equal(got, expected)
    if bad != bad or tensor == "query":  # NaN anywhere, or inf in a query: exactly softmax's rows
        assert torch.equal(got, softmax_bad)
    else:  # an inf key/value: softmax's rows depend on signs (-inf scores are finite); YOSO's cover them
        assert (got | ~softmax_bad).all()
    # padded rows stay exactly 0
    assert torch.equal(out[1, :, 4:], torch.zeros_like(out[1, :, 4:]))


def test_non_finite_padded_key_or_value_is_ignored():
    # (SDPA softmax would give NaN here: a masked value still enters as 0 * NaN)
    q, k, v, mask = inputs()
    k[1, 0, 5, 0] = float("nan")  # position 5 of example 1 is padding
    v[1, 1, 4, :] = float("inf")
    out = yoso(q, k, v, mask)
    assert torch.isfinite(out).all()
    clean = inputs()
    torch.testing.assert_close(out, yoso(*clean))


def test_finite_inputs_unchanged_and_gradients_finite():
    q, k, v, mask = inputs()
    q.requires_grad_(True)
    out = yoso(q, k, v, mask)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
