"""Python side of the compiled backends (CPU and CUDA): one set of wrappers.

The wrappers have the Python signatures of ``reference.py``; they validate
shapes with clear errors, convert arguments to what the extensions take
(float32 data, bool masks, int32 codes, contiguous memory) and call the
``yoso::*`` custom ops (``custom_ops.py``), which dispatch by device to the
extension registered for it, so that ``torch.compile`` traces them as single
nodes. Outputs are float32 (codes int32).
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import torch

from src.kernels import custom_ops, reference


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous()


def _mask(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.bool).contiguous()


def _codes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.int32).contiguous()


def _shape_error(what: str, **tensors: torch.Tensor) -> ValueError:
    shapes = ", ".join(f"{name}={list(t.shape)}" for name, t in tensors.items())
    return ValueError(f"yoso compiled backend: {what}; got {shapes}")


def _check_same_device(**tensors: torch.Tensor) -> None:
    """All inputs on one device (the op runs where its first input lives)."""
    devices = {tensor.device for tensor in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"yoso compiled backend: inputs on different devices ({where})")


def _check_sides(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    value: torch.Tensor,
) -> None:
    _check_same_device(
        query_mask=query_mask,
        query_codes=query_codes,
        key_mask=key_mask,
        key_codes=key_codes,
        value=value,
    )
    if query_codes.dim() != 3 or key_codes.dim() != 3 or value.dim() != 3:
        raise _shape_error(
            "codes must be [BH, n, m] and value [BH, nk, dv]",
            query_codes=query_codes,
            key_codes=key_codes,
            value=value,
        )
    bh, nq, m = query_codes.shape
    nk = key_codes.shape[1]
    if key_codes.shape[0] != bh or key_codes.shape[2] != m:
        raise _shape_error(
            "query and key codes must share BH and m", query_codes=query_codes, key_codes=key_codes
        )
    if tuple(query_mask.shape) != (bh, nq) or tuple(key_mask.shape) != (bh, nk):
        raise _shape_error(
            "masks must be [BH, nq] and [BH, nk]",
            query_mask=query_mask,
            query_codes=query_codes,
            key_mask=key_mask,
            key_codes=key_codes,
        )
    if tuple(value.shape[:2]) != (bh, nk):
        raise _shape_error("value must be [BH, nk, dv]", value=value, key_codes=key_codes)


def hash_gaussian(x: torch.Tensor, projection: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Random-hyperplane LSH codes ``[BH, n, m]`` int32 (``reference.hash_gaussian``)."""
    reference.check_hash_code_len(hash_code_len)
    _check_same_device(x=x, projection=projection)
    if (
        x.dim() != 3
        or projection.dim() != 3
        or projection.shape[:2] != (x.shape[0], x.shape[2])
        or projection.shape[2] % hash_code_len
    ):
        raise _shape_error(
            f"need x [BH, n, d] and projection [BH, d, m * {hash_code_len}]",
            x=x,
            projection=projection,
        )
    return custom_ops.hash_gaussian(_float(x), _float(projection), hash_code_len)


def hash_fast(
    x: torch.Tensor, signs: torch.Tensor, num_hashes: int, hash_code_len: int
) -> torch.Tensor:
    """Hadamard LSH codes ``[BH, n, num_hashes]`` int32 (``reference.hash_fast``)."""
    reference.check_hash_code_len(hash_code_len)
    _check_same_device(x=x, signs=signs)
    if x.dim() != 3 or signs.dim() != 4:
        raise _shape_error("need x [BH, n, d] and signs [BH, 3, parts, D]", x=x, signs=signs)
    width = reference.fast_hash_dim(x.shape[-1], hash_code_len)
    parts = reference.fast_hash_num_parts(num_hashes, x.shape[-1], hash_code_len)
    if (
        num_hashes < 1
        or signs.shape[:2] != (x.shape[0], 3)
        or signs.shape[3] != width
        or signs.shape[2] < parts
    ):
        raise _shape_error(
            f"signs must be [BH, 3, >= {parts}, {width}] for num_hashes={num_hashes}, "
            f"hash_code_len={hash_code_len}",
            x=x,
            signs=signs,
        )
    return custom_ops.hash_fast(_float(x), _float(signs), num_hashes, hash_code_len)


def lsh_cumulation(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i) = h(k_j)] v_j`` (the reference op)."""
    reference.check_hash_code_len(hash_code_len)
    _check_sides(query_mask, query_codes, key_mask, key_codes, value)
    return custom_ops.lsh_cumulation(
        _mask(query_mask),
        _codes(query_codes),
        _mask(key_mask),
        _codes(key_codes),
        _float(value),
        hash_code_len,
    )


def lsh_weighted_cumulation(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    query_weight: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    key_weight: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
    method: str = "auto",
) -> torch.Tensor:
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i)=h(k_j)] (a_i . b_j) v_j`` (dQ / dK).

    ``method`` is accepted for signature parity with the reference; the compiled
    kernel always picks the cheaper exact method per hash bucket.
    """
    if method not in ("auto", "pairs", "tables"):
        raise ValueError(f"method must be 'auto', 'pairs' or 'tables', got {method!r}")
    reference.check_hash_code_len(hash_code_len)
    _check_sides(query_mask, query_codes, key_mask, key_codes, value)
    _check_same_device(query_weight=query_weight, key_weight=key_weight)
    if (
        query_weight.dim() != 3
        or key_weight.dim() != 3
        or query_weight.shape[:2] != query_codes.shape[:2]
        or key_weight.shape[:2] != key_codes.shape[:2]
        or query_weight.shape[2] != key_weight.shape[2]
    ):
        raise _shape_error(
            "weights must be [BH, nq, w] and [BH, nk, w] matching the codes",
            query_weight=query_weight,
            key_weight=key_weight,
            query_codes=query_codes,
            key_codes=key_codes,
        )
    return custom_ops.lsh_weighted_cumulation(
        _mask(query_mask),
        _codes(query_codes),
        _float(query_weight),
        _mask(key_mask),
        _codes(key_codes),
        _float(key_weight),
        _float(value),
        hash_code_len,
    )


def make_backend(device_type: str, extension: ModuleType) -> SimpleNamespace:
    """Register ``extension`` for ``device_type`` tensors and return the backend namespace."""
    custom_ops.register_extension(device_type, extension)
    return SimpleNamespace(
        name=device_type,
        device_type=device_type,
        extension=extension,
        hash_gaussian=hash_gaussian,
        hash_fast=hash_fast,
        lsh_cumulation=lsh_cumulation,
        lsh_weighted_cumulation=lsh_weighted_cumulation,
    )
