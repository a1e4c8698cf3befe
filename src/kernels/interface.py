"""The public entry points: ``yoso_attention`` and ``sequence_conv``.

They check the tensors once, settle the options once, choose the kernels, and
compose the steps of ``pipeline.py``; nothing below them validates again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.kernels import pipeline, reference
from src.kernels.autograd import SequenceConvolution
from src.kernels.backends import select_kernels
from src.kernels.options import YOSOOptions


def yoso_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    query_mask: Tensor | None = None,
    options: YOSOOptions | None = None,
    generator: torch.Generator | None = None,
    conv_weight: Tensor | None = None,
    **settings: Any,
) -> Tensor:
    """YOSO attention ``normalize(Y)`` with ``Y_i = sum_j M_j B(q_i, k_j) v_j``.

    Args:
        query, key, value: ``[B, H, n, d]`` (values may have their own head dim).
        mask: ``[B, n_k]`` 0/1 key padding mask (1 = token); also the query mask
            when ``query_mask`` is None and the lengths match.
        options: a ``YOSOOptions``; or give its fields as keywords (``settings``,
            e.g. ``hash_code_len=8, num_hashes=16``), not both.
        generator: RNG for the hash parameters (default: torch's global RNG).
        conv_weight: YOSO-C: ``[H, w]`` filters (``w`` odd) of a depthwise convolution
            along the sequence of the masked values, added to the output. Computed on
            the zeroed values the attention saves anyway: no copy of ``V``, no second
            saved one.

    Returns:
        ``[B, H, n_q, d_v]`` in the query's dtype, a view of a ``[B, n_q, H, d_v]``
        tensor (heads merge without a copy); padded query rows are 0 (with
        ``conv_weight``: the convolution of their real neighbours' values).
    """
    options = _settle_options(options, settings)
    _check_attention_inputs(query, key, value)
    batch, heads, num_queries, _ = query.shape
    key_mask = bool_mask(mask, batch, key.shape[2], query.device)
    if query_mask is not None:
        query_mask = bool_mask(query_mask, batch, num_queries, query.device)
    elif num_queries == key.shape[2]:
        query_mask = key_mask
    else:
        query_mask = bool_mask(None, batch, num_queries, query.device)
    if conv_weight is not None:
        _check_filters(conv_weight, heads, "conv_weight")
        if num_queries != key.shape[2]:
            raise ValueError(
                f"conv_weight needs as many queries as keys, got {num_queries} and {key.shape[2]}"
            )
    sampled = not options.expectation
    kernels = select_kernels(query.device, options.backend) if sampled or conv_weight is not None else None
    with torch.autocast(device_type=query.device.type, enabled=False):
        prepared = pipeline.prepare(query, key, value, key_mask, query_mask)
        codes = pipeline.hash_codes(prepared, options, kernels, generator) if sampled else None
        y = pipeline.cumulate(prepared, options, kernels, codes)
        return pipeline.finish(y, prepared, options, kernels, conv_weight)


def sequence_conv(value: Tensor, mask: Tensor, weight: Tensor, backend: str | None = None) -> Tensor:
    """YOSO-C's depthwise convolution of the masked values along the sequence.

    ``out[b, h, i] = sum_t weight[h, t] * mask[b, j] * value[b, h, j]``, ``j = i + t - w // 2``
    (zero outside the sequence; ``conv1d``'s cross-correlation with "same" padding).

    Args:
        value: ``[B, H, n, d]``.
        mask: ``[B, n]`` key padding mask (1 = token); padded rows count as zero.
        weight: ``[H, w]`` filters, ``w`` odd.
        backend: as ``YOSOOptions.backend``; float64 always runs the reference.

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
    key_mask = bool_mask(mask, batch, length, value.device)
    flat_mask = key_mask.unsqueeze(1).expand(batch, heads, length).reshape(batch * heads, length)
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    kernels = reference if compute == torch.float64 else select_kernels(value.device, backend)
    with torch.autocast(device_type=value.device.type, enabled=False):
        flat = value.to(compute).contiguous().reshape(batch * heads, length, dim)
        filters = weight.to(compute).contiguous()
        out = SequenceConvolution.apply(flat, flat_mask.contiguous(), filters, kernels)
    return out.reshape(batch, heads, length, dim).to(value.dtype)


def _settle_options(options: YOSOOptions | None, settings: dict[str, Any]) -> YOSOOptions:
    if options is not None and settings:
        raise ValueError(f"give either options= or option keywords, not both (got {sorted(settings)})")
    if options is not None:
        return options
    try:
        return YOSOOptions(**settings)
    except TypeError as error:  # an unknown or missing keyword: name the valid ones
        fields = ", ".join(YOSOOptions.__dataclass_fields__)
        raise TypeError(f"yoso_attention: {error}; its options are: {fields}") from None


def bool_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """A ``[B, n]`` 0/1 (bool, int or float) padding mask as bool; ``None``: every position real.

    Any value other than 0 and 1 is an error: an additive or scaled mask passed by
    mistake must not read as "all real".
    """
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.shape != (batch, length):
        raise ValueError(f"mask must have shape [batch, seq_len] = {[batch, length]}, got {list(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 (padding) and 1 (token); got other values. "
                             "Pass the 0/1 key padding mask itself, not an additive or scaled mask.")
        mask = mask != 0
    return mask.to(device)


def _check_attention_inputs(query: Tensor, key: Tensor, value: Tensor) -> None:
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


def _check_filters(weight: Tensor, heads: int, name: str) -> None:
    """The convolution's filters must be ``[heads, odd window]``."""
    if weight.dim() != 2 or weight.shape[0] != heads or weight.shape[1] % 2 == 0:
        raise ValueError(f"{name} must be [heads, odd window] = [{heads}, w], got {list(weight.shape)}")
