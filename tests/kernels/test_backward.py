"""The paper's surrogate backward: dense formulas, exact dV, and LSH unbiasedness."""

from __future__ import annotations

import numpy as np
import torch

from src.kernels import yoso_attention


def make_inputs(seed: int, b=1, h=2, n=24, d=8, pad=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    upstream = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n)
    if pad:
        mask[:, n - 5 :] = 0
    return q, k, v, upstream, mask


def grads_of(fn, q, k, v, upstream):
    q, k, v = (t.float().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    (out * upstream.float()).sum().backward()
    return q.grad.double(), k.grad.double(), v.grad.double()


def dense_surrogate_grads(q, k, v, upstream, mask, tau):
    """Independent float64 evaluation of the surrogate gradients, through the q/k normalisation."""
    q = q.clone().requires_grad_(True)
    k = k.clone().requires_grad_(True)
    qn = q / q.norm(dim=-1, keepdim=True)
    kn = k / k.norm(dim=-1, keepdim=True)
    m = mask.double()
    with torch.no_grad():
        cos = (qn @ kn.transpose(-1, -2)).clamp(-1, 1)
        w = (1 - torch.arccos(cos) / np.pi) ** tau * m[:, None, :, None] * m[:, None, None, :]
        g = upstream
        grad_v = w.transpose(-1, -2) @ g
        s = w * (g @ v.transpose(-1, -2)) * (tau / 2)
        grad_qn = s @ kn
        grad_kn = s.transpose(-1, -2) @ qn
    torch.autograd.backward([qn, kn], [grad_qn, grad_kn])
    return q.grad, k.grad, grad_v


def test_expectation_backward_matches_dense_surrogate_formulas():
    q, k, v, upstream, mask = make_inputs(0)
    tau = 6

    def fn(q, k, v):
        return yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau, normalize_output=False)

    got = grads_of(fn, q, k, v, upstream)
    want = dense_surrogate_grads(q, k, v, upstream, mask, tau)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_surrogate_dv_is_the_exact_gradient():
    """Y is linear in V, so the surrogate dV must equal plain autograd of the dense formula."""
    q, k, v, upstream, mask = make_inputs(1)
    tau = 5

    def exact(q, k, v):
        qn = q / q.norm(dim=-1, keepdim=True)
        kn = k / k.norm(dim=-1, keepdim=True)
        cos = (qn @ kn.transpose(-1, -2)).clamp(-1 + 1e-6, 1 - 1e-6)
        w = (1 - torch.arccos(cos) / np.pi) ** tau * mask[:, None, None, :]
        return (w @ v) * mask[:, None, :, None]

    def surrogate(q, k, v):
        return yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau, normalize_output=False)

    _, _, dv_exact = grads_of(exact, q, k, v, upstream)
    _, _, dv_surrogate = grads_of(surrogate, q, k, v, upstream)
    torch.testing.assert_close(dv_surrogate, dv_exact, rtol=1e-4, atol=1e-5)


def test_lsh_backward_mean_converges_to_expectation_backward():
    q, k, v, upstream, mask = make_inputs(2)
    tau = 4
    gen = torch.Generator().manual_seed(3)

    def lsh(q, k, v):
        return yoso_attention(
            q, k, v, mask, num_hashes=64, hash_code_len=tau, normalize_output=False, generator=gen
        )

    def expectation(q, k, v):
        return yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau, normalize_output=False)

    want = grads_of(expectation, q, k, v, upstream)
    draws = [grads_of(lsh, q, k, v, upstream) for _ in range(64)]  # 4096 hashes in all
    for index, name in enumerate("qkv"):
        samples = torch.stack([d[index] for d in draws])
        assert torch.isfinite(samples).all()
        mean = samples.mean(0)
        single = ((samples[0] - want[index]).norm() / want[index].norm()).item()
        error = ((mean - want[index]).norm() / want[index].norm()).item()
        # The mean of 64 independent draws should cut the error ~8x; demand 4x.
        assert error < single / 4, (name, error, single)
        assert error < 0.1, (name, error)


def test_quadratic_backward_option_uses_expectation_gradients():
    """lsh_backward=False: sampling forward, but gradients are the expectation ones."""
    q, k, v, upstream, mask = make_inputs(4)
    tau = 4

    def sampled(q, k, v):
        return yoso_attention(
            q, k, v, mask, num_hashes=8, hash_code_len=tau, lsh_backward=False, normalize_output=False
        )

    def expectation(q, k, v):
        return yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau, normalize_output=False)

    for got, want in zip(grads_of(sampled, q, k, v, upstream), grads_of(expectation, q, k, v, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_masked_positions_get_zero_gradients_and_no_nan():
    q, k, v, upstream, mask = make_inputs(5, b=2)
    mask[0] = 0  # an all-padding sequence; sequence 1 has its last 5 positions padded

    def fn(q, k, v):
        return yoso_attention(q, k, v, mask, num_hashes=16, hash_code_len=8)

    padded = mask == 0
    for grad in grads_of(fn, q, k, v, upstream):
        assert torch.isfinite(grad).all()
        assert grad.permute(0, 2, 1, 3)[padded].abs().max() == 0
        assert grad[1].abs().max() > 0
