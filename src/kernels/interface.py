"""The one entry point for YOSO attention: ``yoso_attention``, and the one validation.

Modules call only this function; it validates inputs, draws the hash
parameters, hashes, chooses between the reference ops and the compiled ops
(``ops.py``, whose kernel for the tensors' device torch's dispatcher picks)
and applies the paper's normalisations.

Backend selection: ``backend=`` or ``$YOSO_BACKEND``; ``"auto"`` (default) uses
the compiled ops and falls back to the reference with one warning when they
cannot be built; ``"cpu"`` / ``"cuda"`` insist on them (and on that device);
``"reference"`` is the plain-PyTorch definition.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Literal

import torch

from src.kernels import build, ops, reference
from src.kernels.autograd import (
    ConvolvedOutput,
    ExactExpectation,
    ExpectationCumulation,
    LSHCumulation,
    RowNormalize,
    SequenceConvolution,
)

Hashing = Literal["gaussian", "fast"]
HASHINGS = ("gaussian", "fast")
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = ("auto", "float32", "bfloat16")
BACKENDS = ("auto", "reference", "cpu", "cuda")
BACKEND_ENV_VAR = "YOSO_BACKEND"
_WARNED: set[str] = set()


def select_ops(device: torch.device, backend: str | None = None) -> ModuleType:
    """The module whose ops run for tensors on ``device``: ``ops`` (compiled) or ``reference``."""
    name = backend or os.environ.get(BACKEND_ENV_VAR) or "auto"
    if name not in BACKENDS:
        raise ValueError(f"unknown YOSO backend {name!r}; choose one of {BACKENDS}")
    if name == "reference":
        return reference
    if name != "auto" and name != device.type:
        raise ValueError(
            f"YOSO backend {name!r} runs on {name} tensors, got {device.type} tensors; "
            "move the tensors or choose backend='auto'"
        )
    if device.type not in ops.DEVICE_TYPES:
        return reference
    try:
        build.extension(device.type)
    except RuntimeError as error:
        if name != "auto":
            raise
        if device.type not in _WARNED:
            _WARNED.add(device.type)
            warnings.warn(
                f"{error}. Falling back to the (slower) PyTorch reference implementation. "
                f"Set {BACKEND_ENV_VAR}=reference to silence this warning.",
                RuntimeWarning,
                stacklevel=3,
            )
        return reference
    return ops

def draw_hash_parameters(
    batch_heads: int,
    head_dim: int,
    num_hashes: int,
    hash_code_len: int,
    hashing: Hashing,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fresh random hash directions (Gaussian) or +-1 diagonals (fast hash).

    Drawn from ``generator`` or torch's global RNG so that ``torch.manual_seed``
    replays a run.
    """
    if hashing == "gaussian":
        shape = (batch_heads, head_dim, num_hashes * hash_code_len)
        return torch.randn(shape, device=device, generator=generator)
    width = reference.fast_hash_dim(head_dim, hash_code_len)
    parts = reference.fast_hash_num_parts(num_hashes, head_dim, hash_code_len)
    bits = torch.randint(0, 2, (batch_heads, 3, parts, width), device=device, generator=generator)
    return (bits * 2 - 1).to(torch.float32)


def hash_codes(
    vectors: torch.Tensor,
    parameters: torch.Tensor,
    num_hashes: int,
    hash_code_len: int,
    hashing: Hashing,
    impl: ModuleType = reference,
) -> torch.Tensor:
    """``[BH, n, m]`` int32 codes of ``vectors`` with the given hash parameters.

    ``impl`` is ``reference`` or ``ops`` (see ``select_ops``).
    """
    vectors = vectors.float().contiguous()
    parameters = parameters.float().contiguous()
    if hashing == "gaussian":
        return impl.hash_gaussian(vectors, parameters, hash_code_len)
    return impl.hash_fast(vectors, parameters, num_hashes, hash_code_len)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim; an all-zero row stays 0 (value and gradient), never NaN."""
    return RowNormalize.apply(x)


def as_bool_mask(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Validate a ``[B, n]`` 0/1 padding mask (bool, int or float) and return it as bool."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.shape != (batch, length):
        raise ValueError(
            f"mask must have shape [batch, seq_len] = {[batch, length]}, got {list(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask must hold only 0 (padding) and 1 (token); got other values. "
                "Pass the 0/1 key padding mask itself, not an additive or scaled mask."
            )
        mask = mask != 0
    return mask.to(device)


def _validate(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq_len, head_dim], got {list(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
        if tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device} but query is on {query.device}")
    if query.shape[:2] != key.shape[:2] or key.shape[:3] != value.shape[:3]:
        raise ValueError(
            "query/key/value must share batch and heads, and key/value their length: got "
            f"{list(query.shape)}, {list(key.shape)}, {list(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key head dims differ: {query.shape[-1]} vs {key.shape[-1]}")
    if min(query.shape[2], key.shape[2], query.shape[-1], value.shape[-1]) < 1:
        raise ValueError("sequence lengths and head dims must be >= 1")


def _check_filters(weight: torch.Tensor, heads: int, name: str) -> None:
    """The convolution's filters must be ``[heads, odd window]``."""
    if weight.dim() != 2 or weight.shape[0] != heads or weight.shape[1] % 2 == 0:
        raise ValueError(f"{name} must be [heads, odd window] = [{heads}, w], got {list(weight.shape)}")


def propagate_non_finite(
    y: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qm: torch.Tensor, km: torch.Tensor
) -> torch.Tensor:
    """Make ``y`` NaN where softmax attention would be: hashing turns NaN/inf into finite codes.

    A non-finite query makes its own row NaN; a non-finite real (unmasked) key or
    value makes every real row of its batch x head NaN; padded positions stay
    ignored and padded rows are exactly 0 (also when a kernel left NaN there).
    Adds ``0 * x`` sums (NaN exactly where ``x`` is not finite): one pass over
    q, k, v, no data-dependent branch (compiles).
    """
    keys = torch.where(km, (k * 0).sum(-1) + (v * 0).sum(-1), 0.0).sum(-1, keepdim=True)  # [BH, 1]
    rows = (q * 0).sum(-1) + keys  # [BH, n_q]
    return torch.where(qm.unsqueeze(-1), y + rows.unsqueeze(-1), 0.0)


def yoso_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    query_mask: torch.Tensor | None = None,
    num_hashes: int = 32,
    hash_code_len: int = 8,
    expectation: bool = False,
    lsh_backward: bool = True,
    hashing: Hashing = "gaussian",
    backend: str | None = None,
    generator: torch.Generator | None = None,
    normalize_output: bool = True,
    exact_gradient: bool = False,
    backward_precision: Precision = "auto",
    conv_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """YOSO attention ``normalize(Y)`` with ``Y_i = sum_j M_j B(q_i, k_j) v_j``.

    Args:
        query, key, value: ``[B, H, n, d]`` (values may have their own head dim).
        mask: ``[B, n_k]`` key padding mask (1 = token, 0 = padding); also the
            query mask when ``query_mask`` is None and lengths match.
        num_hashes: ``m`` hashes of the sampling estimator.
        hash_code_len: ``tau`` bits per hash.
        expectation: YOSO-E (exact expectation, quadratic) instead of sampling.
        lsh_backward: linear LSH backward; False uses the quadratic expectation backward.
        hashing: ``"gaussian"`` projections or the ``"fast"`` Hadamard hash.
        backend: ``None``/``"auto"`` (by device), ``"reference"``, ``"cpu"``, ``"cuda"``.
        generator: RNG for the hash parameters (default: torch's global RNG).
        normalize_output: L2-normalise each output row (the paper's default).
        exact_gradient: with ``expectation=True``, plain autograd of YOSO-E (the true
            derivative of the collision probability) instead of the paper's surrogate;
            quadratic memory, meant as a reference for tests and studies.
        backward_precision: operands of the LSH backward's per-pair contractions
            (``S = G V^T``, ``S K``, ``S^T Q``; sums always fp32). ``"bfloat16"`` runs
            them on AVX512-BF16 (``ops.bf16_supported()``; float32 elsewhere), for any
            input dtype; its error is far below the estimator's ~1/sqrt(m) noise.
            ``"auto"`` (default): bfloat16 for bfloat16 queries (what ``bf16-mixed``
            training sends), float32 otherwise, so float32 inputs stay exact against
            the reference (``docs/kernels.md``).
        conv_weight: YOSO-C: ``[H, w]`` filters (``w`` odd) of a depthwise convolution
            along the sequence of the masked values (``sequence_conv``), added to the
            output. Computed here on the zeroed values the attention saves anyway, so
            that the convolution costs no copy of ``V`` and no second saved one.

    Returns:
        ``[B, H, n_q, d_v]`` in the query's dtype, a view of a ``[B, n_q, H, d_v]``
        tensor (heads merge without a copy); padded query rows are 0 (with
        ``conv_weight``: the convolution of their real neighbours' values).
    """
    _validate(query, key, value)
    reference.check_hash_code_len(hash_code_len)
    if not isinstance(num_hashes, int) or num_hashes < 1:
        raise ValueError(f"num_hashes must be a positive int, got {num_hashes!r}")
    if hashing not in HASHINGS:
        raise ValueError(f"hashing must be one of {HASHINGS}, got {hashing!r}")
    if backward_precision not in PRECISIONS:
        raise ValueError(f"backward_precision must be one of {PRECISIONS}, got {backward_precision!r}")
    if conv_weight is not None:
        _check_filters(conv_weight, query.shape[1], "conv_weight")
    if conv_weight is not None and query.shape[2] != key.shape[2]:
        raise ValueError(
            f"conv_weight needs as many queries as keys, got {query.shape[2]} and {key.shape[2]}"
        )
    if exact_gradient and not expectation:
        raise ValueError("exact_gradient=True needs expectation=True (sampling has no exact gradient)")
    batch, heads, num_queries, head_dim = query.shape
    num_keys, value_dim = key.shape[2], value.shape[-1]
    key_mask = as_bool_mask(mask, batch, num_keys, query.device)
    if query_mask is not None:
        query_mask = as_bool_mask(query_mask, batch, num_queries, query.device)
    elif num_queries == num_keys:
        query_mask = key_mask
    else:
        query_mask = as_bool_mask(None, batch, num_queries, query.device)

    out_dtype = query.dtype
    bf16_backward = backward_precision == "bfloat16" or (
        backward_precision == "auto" and query.dtype == torch.bfloat16
    )
    bh = batch * heads
    with torch.autocast(device_type=query.device.type, enabled=False):
        # Padded keys/values are zeroed first (a NaN there must not leak in through
        # 0 * NaN), and the zeroing is the one copy of k and v: contiguous before
        # normalising, so that each normalised tensor is saved once, as a view, by both
        # autograd nodes (a strided one would be copied by reshape and kept twice).
        padded = ~key_mask[:, None, :, None]
        q = normalize_rows(query.float().contiguous()).reshape(bh, num_queries, head_dim)
        k = normalize_rows(key.float().masked_fill(padded, 0.0).contiguous())
        k = k.reshape(bh, num_keys, head_dim)
        v = value.float().masked_fill(padded, 0.0).contiguous().reshape(bh, num_keys, value_dim)
        qm = query_mask.unsqueeze(1).expand(batch, heads, num_queries).reshape(bh, num_queries)
        km = key_mask.unsqueeze(1).expand(batch, heads, num_keys).reshape(bh, num_keys)
        if expectation and exact_gradient:
            y = ExactExpectation.apply(qm, km, q, k, v, hash_code_len)
        elif expectation:
            y = ExpectationCumulation.apply(qm, km, q, k, v, hash_code_len)
        else:
            impl = select_ops(query.device, backend)
            params = draw_hash_parameters(
                bh, head_dim, num_hashes, hash_code_len, hashing, query.device, generator
            )
            with torch.no_grad():
                q_codes = hash_codes(q.detach(), params, num_hashes, hash_code_len, hashing, impl)
                k_codes = hash_codes(k.detach(), params, num_hashes, hash_code_len, hashing, impl)
            y = LSHCumulation.apply(
                qm.contiguous(), km.contiguous(), q, k, v, q_codes, k_codes,
                hash_code_len, lsh_backward, impl, bf16_backward,
            )
        y = propagate_non_finite(y, q, k, v, qm, km)
        # The result is laid out as [B, n, H, d] and returned as a [B, H, n, d] view, so
        # that merging the heads afterwards is a view too: the output projection then
        # saves the very tensor the normalisation saves, not a second copy per layer.
        y = y.reshape(batch, heads, num_queries, value_dim).transpose(1, 2).contiguous()
        if conv_weight is not None:
            conv_ops = select_ops(query.device, backend)
            filters = conv_weight.float().contiguous()
            y = ConvolvedOutput.apply(y, v, km.contiguous(), filters, normalize_output, conv_ops)
        elif normalize_output:
            y = normalize_rows(y)
    return y.transpose(1, 2).to(out_dtype)


def sequence_conv(
    value: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, backend: str | None = None
) -> torch.Tensor:
    """YOSO-C's depthwise convolution of the masked values along the sequence.

    ``out[b, h, i] = sum_t weight[h, t] * mask[b, j] * value[b, h, j]``, ``j = i + t - w // 2``
    (zero outside the sequence; ``conv1d``'s cross-correlation with "same" padding).

    Args:
        value: ``[B, H, n, d]``.
        mask: ``[B, n]`` key padding mask (1 = token); padded rows count as zero.
        weight: ``[H, w]`` filters, ``w`` odd.
        backend: as for ``yoso_attention``; float64 always runs the reference.

    Returns:
        ``[B, H, n, d]`` in the values' dtype (computed in float32, or float64).

    Why an op of its own: PyTorch's CPU depthwise convolution with a ``(w, 1)``
    kernel, or a banded GEMM over unfolded windows, took more time than the YOSO
    attention beside it; the compiled op slides the filter over rows in registers.
    """
    if value.dim() != 4 or not value.is_floating_point():
        raise ValueError(f"value must be a floating-point [batch, heads, seq_len, head_dim] tensor, got "
                         f"{value.dtype} {list(value.shape)}")
    batch, heads, length, dim = value.shape
    _check_filters(weight, heads, "weight")
    key_mask = as_bool_mask(mask, batch, length, value.device)
    flat_mask = key_mask.unsqueeze(1).expand(batch, heads, length).reshape(batch * heads, length)
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    impl = reference if compute == torch.float64 else select_ops(value.device, backend)
    with torch.autocast(device_type=value.device.type, enabled=False):
        flat = value.to(compute).contiguous().reshape(batch * heads, length, dim)
        out = SequenceConvolution.apply(flat, flat_mask.contiguous(), weight.to(compute).contiguous(), impl)
    return out.reshape(batch, heads, length, dim).to(value.dtype)
