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

import math
from typing import TYPE_CHECKING, Any

import torch

from src.kernels.reference import expectation_weights

if TYPE_CHECKING:
    from src.kernels.backends import Kernels

# arccos has an infinite slope at +-1: the exact gradient clamps the cosine just inside.
_EXACT_COSINE_LIMIT = 1.0 - 1e-6
_CODE_STORAGE = torch.int16


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


class RowNormalize(torch.autograd.Function):
    """``x / ||x||`` over the last dim, 0 for all-zero rows (value and gradient).

    Why a Function: autograd of the composite (norm, where, mul) makes ~7 passes
    over the tensor in the backward; the closed form ``(g - y (g . y)) / ||x||``
    makes three. These passes were a large share of a YOSO layer's time.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        inverse = _inverse_row_norms(x)
        y = x * inverse
        ctx.save_for_backward(y, inverse)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _normalize_backward(grad, *ctx.saved_tensors)


def _inverse_row_norms(x: torch.Tensor) -> torch.Tensor:
    """``1 / ||x_i||`` per row (keepdim), 0 for an all-zero row."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(norm > 0, 1.0 / norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def _normalize_backward(grad: torch.Tensor, rows: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Gradient of ``x / ||x||`` from the normalised ``rows`` and ``inverse`` norms."""
    along = torch.linalg.vecdot(grad, rows, dim=-1).unsqueeze(-1)
    return torch.addcmul(grad, rows, along, value=-1.0).mul_(inverse)


class ConvolvedOutput(torch.autograd.Function):
    """YOSO-C's output ``normalize(y) + sequence_conv(v)`` (or ``y + conv``), saving only the sum.

    Why a Function: the output projection saves the sum anyway, but ``RowNormalize``
    followed by an add would also keep the normalised rows, one ``[B, n, H, d]``
    tensor per layer more than YOSO-m. Here the backward gets those rows back as
    ``sum - conv``, recomputing the convolution (the compiled op, a few % of the
    layer). The op reads and writes the ``[B, n, H, d]`` layout itself and scales and
    adds in the same pass: no convolution tensor, no normalising or add pass, no
    transposed copy of the gradient.

    ``y``: ``[B, n, H, d]`` contiguous; ``value``: ``[BH, n, d]``; ``mask``:
    ``[BH, n]`` bool; ``weight``: ``[H, w]``; ``kernels``: ``ops`` or ``reference``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        y: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor,
        weight: torch.Tensor,
        normalize: bool,
        kernels: Kernels,
    ) -> torch.Tensor:
        inverse = _inverse_row_norms(y) if normalize else None
        out = kernels.sequence_conv_add(y, inverse, value, mask, weight)  # y * inverse + conv, one pass
        ctx.save_for_backward(out, inverse, value, mask, weight)
        ctx.kernels = kernels
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out, inverse, value, mask, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_value, grad_weight = ctx.kernels.sequence_conv_backward(grad, value, mask, weight)
        if inverse is None:
            return grad, grad_value, None, grad_weight, None, None
        rows = ctx.kernels.sequence_conv_add(out, None, value, mask, -weight)  # normalised rows: sum - conv
        return _normalize_backward(grad, rows, inverse), grad_value, None, grad_weight, None, None


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


class ExactExpectation(torch.autograd.Function):
    """YOSO-E with the true derivative of ``(1 - arccos(x)/pi)**tau`` (a test reference)."""

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
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (query, key, value)]
            q, k, v = leaves
            cosine = torch.bmm(q, k.transpose(1, 2)).clamp(-_EXACT_COSINE_LIMIT, _EXACT_COSINE_LIMIT)
            weights = (1.0 - torch.arccos(cosine) / math.pi) ** hash_code_len
            weights = weights * key_mask.to(q.dtype).unsqueeze(-2)
            y = torch.bmm(weights, v) * query_mask.to(q.dtype).unsqueeze(-1)
        ctx.save_for_backward(y, *leaves)
        return y.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, *leaves = ctx.saved_tensors
        grads = torch.autograd.grad(y, leaves, grad)
        return (None, None, *grads, None)


class LSHCumulation(torch.autograd.Function):
    """YOSO-m: hash-table forward; fused LSH (linear) or expectation (quadratic) backward.

    ``kernels`` are ``ops`` (compiled) or ``reference`` (``backends.Kernels``); inputs are
    float32 with bool masks and int32 codes; ``bf16`` asks the compiled backward for
    bf16 contractions (``ops.lsh_backward``).
    """

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
        kernels: Kernels,
        bf16: bool = False,
    ) -> torch.Tensor:
        query, key = query.contiguous(), key.contiguous()
        # Codes are kept as int16 when they fit (tau <= 15): half the memory of the
        # int32 the kernels take, restored in the backward for the cost of one cast.
        stored = [c.to(_CODE_STORAGE) if hash_code_len <= 15 else c for c in (query_codes, key_codes)]
        ctx.save_for_backward(query_mask, key_mask, query, key, value, *stored)
        ctx.hash_code_len = hash_code_len
        ctx.lsh_backward = lsh_backward
        ctx.kernels = kernels
        ctx.bf16 = bf16
        return kernels.lsh_cumulation(query_mask, query_codes, key_mask, key_codes, value, hash_code_len)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query_mask, key_mask, query, key, value, query_codes, key_codes = ctx.saved_tensors
        query_codes, key_codes = query_codes.to(torch.int32), key_codes.to(torch.int32)
        tau = ctx.hash_code_len
        grad = grad.float().contiguous()
        if ctx.lsh_backward:
            grads = ctx.kernels.lsh_backward(
                query_mask, query_codes, query, key_mask, key_codes, key, value, grad, tau, ctx.bf16
            )
        else:
            grads = _expectation_backward(
                grad, query_mask.to(grad.dtype), key_mask.to(grad.dtype), query, key, value, tau
            )
        return (None, None, *grads, None, None, None, None, None, None)


class SequenceConvolution(torch.autograd.Function):
    """YOSO-C's convolution on V with the op pair's own backward (``kernels.sequence_conv*``).

    Inputs as ``reference.sequence_conv`` (``[BH, n, d]`` values, ``[BH, n]`` bool mask,
    ``[H, w]`` filters), float32 and contiguous for the compiled ops.
    """

    @staticmethod
    def forward(
        ctx: Any, value: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, kernels: Kernels
    ) -> torch.Tensor:
        ctx.save_for_backward(value, mask, weight)
        ctx.kernels = kernels
        return kernels.sequence_conv(value, mask, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        value, mask, weight = ctx.saved_tensors
        grad_value, grad_weight = ctx.kernels.sequence_conv_backward(grad.contiguous(), value, mask, weight)
        return grad_value, None, grad_weight, None
