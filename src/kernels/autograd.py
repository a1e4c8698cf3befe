"""Autograd functions carrying the paper's surrogate backward.

Both functions take unit-norm ``q``, ``k`` (``[BH, n, d]``), values and masks
and return the *unnormalised* cumulation ``Y`` (``[BH, nq, dv]``):
``Y_i = mq_i * sum_j mk_j B_ij v_j`` with ``B`` the collision probability
(expectation) or the hash-averaged collision indicator (sampling).

The true derivative of ``(1 - arccos(x)/pi)**tau`` cannot be estimated by LSH;
the paper replaces it with ``(tau/2) * B``, which gives (``G`` = grad of ``Y``):
- ``dV_j = mk_j * sum_i mq_i B_ij G_i``
- ``dQ_i = (tau/2) * mq_i * sum_j mk_j B_ij (G_i . v_j) k_j``
- ``dK_j = (tau/2) * mk_j * sum_i mq_i B_ij (G_i . v_j) q_i``
"""

from __future__ import annotations

from typing import Any

import torch

from src.kernels.reference import expectation_weights


def _expectation_backward(
    grad: torch.Tensor,
    query_mask: torch.Tensor,
    key_mask: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense (quadratic) surrogate gradients with ``B`` = collision probability."""
    weights = expectation_weights(query, key, hash_code_len)
    weights = weights * query_mask.unsqueeze(-1) * key_mask.unsqueeze(-2)
    grad_value = torch.bmm(weights.transpose(1, 2), grad)
    scaled = weights * torch.bmm(grad, value.transpose(1, 2)) * (hash_code_len / 2)
    grad_query = torch.bmm(scaled, key)
    grad_key = torch.bmm(scaled.transpose(1, 2), query)
    return grad_query, grad_key, grad_value


class ExpectationCumulation(torch.autograd.Function):
    """YOSO-E: dense collision probabilities forward, surrogate backward."""

    @staticmethod
    def forward(
        ctx: Any,
        query_mask: torch.Tensor,
        key_mask: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        hash_code_len: int,
    ) -> torch.Tensor:
        query_mask, key_mask = query_mask.to(query.dtype), key_mask.to(query.dtype)
        weights = expectation_weights(query, key, hash_code_len) * key_mask.unsqueeze(-2)
        ctx.save_for_backward(query_mask, key_mask, query, key, value)
        ctx.hash_code_len = hash_code_len
        return torch.bmm(weights, value) * query_mask.unsqueeze(-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query_mask, key_mask, query, key, value = ctx.saved_tensors
        grads = _expectation_backward(
            grad.contiguous(), query_mask, key_mask, query, key, value, ctx.hash_code_len
        )
        return (None, None, *grads, None)


class LSHCumulation(torch.autograd.Function):
    """YOSO-m: hash-table forward; LSH (linear) or expectation (quadratic) backward."""

    @staticmethod
    def forward(
        ctx: Any,
        query_mask: torch.Tensor,
        key_mask: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        query_codes: torch.Tensor,
        key_codes: torch.Tensor,
        hash_code_len: int,
        lsh_backward: bool,
        ops: Any,
    ) -> torch.Tensor:
        ctx.save_for_backward(query_mask, key_mask, query, key, value, query_codes, key_codes)
        ctx.hash_code_len = hash_code_len
        ctx.lsh_backward = lsh_backward
        ctx.ops = ops
        return ops.lsh_cumulation(query_mask, query_codes, key_mask, key_codes, value, hash_code_len)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query_mask, key_mask, query, key, value, query_codes, key_codes = ctx.saved_tensors
        tau = ctx.hash_code_len
        grad = grad.contiguous()
        if not ctx.lsh_backward:
            grads = _expectation_backward(
                grad, query_mask.to(grad.dtype), key_mask.to(grad.dtype), query, key, value, tau
            )
            return (None, None, *grads, None, None, None, None, None)
        ops = ctx.ops
        grad_value = ops.lsh_cumulation(key_mask, key_codes, query_mask, query_codes, grad, tau)
        grad_query = ops.lsh_weighted_cumulation(
            query_mask, query_codes, grad, key_mask, key_codes, value, key, tau
        ) * (tau / 2)
        grad_key = ops.lsh_weighted_cumulation(
            key_mask, key_codes, value, query_mask, query_codes, grad, query, tau
        ) * (tau / 2)
        return (None, None, grad_query, grad_key, grad_value, None, None, None, None, None)
