"""The compiled YOSO ops as ``torch.library`` custom ops (``torch.ops.yoso.*``).

Why: a pybind function is opaque to ``torch.compile`` (graph break, or an
error under ``fullgraph=True``). A custom op with a fake (meta) implementation
is traced as a single node instead. One op serves every device: its
implementation looks up the extension module registered for the input's
device type (``register_extension("cpu", module)``; the CUDA backend can do
the same with an extension exposing the same four function names).

The ops take what the extensions take (float32 data, bool masks, int32 codes,
contiguous); the backends' Python wrappers convert and validate first.
"""

from __future__ import annotations

from typing import Any

import torch

_EXTENSIONS: dict[str, Any] = {}


def register_extension(device_type: str, extension: Any) -> None:
    """Route the ``yoso::*`` ops on ``device_type`` tensors to ``extension``."""
    _EXTENSIONS[device_type] = extension


def _extension(device: torch.device) -> Any:
    try:
        return _EXTENSIONS[device.type]
    except KeyError:
        raise RuntimeError(
            f"no compiled YOSO extension is registered for {device.type} tensors "
            f"(registered: {sorted(_EXTENSIONS)}); load the backend first"
        ) from None


@torch.library.custom_op("yoso::hash_gaussian", mutates_args=())
def hash_gaussian(x: torch.Tensor, projection: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Random-hyperplane LSH codes ``[BH, n, m]`` (see ``reference.hash_gaussian``)."""
    return _extension(x.device).hash_gaussian(x, projection, hash_code_len)


@hash_gaussian.register_fake
def _(x: torch.Tensor, projection: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    num_hashes = projection.shape[-1] // hash_code_len
    return x.new_empty((x.shape[0], x.shape[1], num_hashes), dtype=torch.int32)


@torch.library.custom_op("yoso::hash_fast", mutates_args=())
def hash_fast(
    x: torch.Tensor, signs: torch.Tensor, num_hashes: int, hash_code_len: int
) -> torch.Tensor:
    """Hadamard (fast) LSH codes ``[BH, n, m]`` (see ``reference.hash_fast``)."""
    return _extension(x.device).hash_fast(x, signs, num_hashes, hash_code_len)


@hash_fast.register_fake
def _(x: torch.Tensor, signs: torch.Tensor, num_hashes: int, hash_code_len: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], x.shape[1], num_hashes), dtype=torch.int32)


@torch.library.custom_op("yoso::lsh_cumulation", mutates_args=())
def lsh_cumulation(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    """Hash-table cumulation ``[BH, nq, dv]`` (see ``reference.lsh_cumulation``)."""
    return _extension(value.device).lsh_cumulation(
        query_mask, query_codes, key_mask, key_codes, value, hash_code_len
    )


@lsh_cumulation.register_fake
def _(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    return value.new_empty((value.shape[0], query_codes.shape[1], value.shape[2]))


@torch.library.custom_op("yoso::lsh_weighted_cumulation", mutates_args=())
def lsh_weighted_cumulation(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    query_weight: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    key_weight: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    """Weighted cumulation ``[BH, nq, dv]`` (see ``reference.lsh_weighted_cumulation``)."""
    return _extension(value.device).lsh_weighted_cumulation(
        query_mask, query_codes, query_weight, key_mask, key_codes, key_weight, value, hash_code_len
    )


@lsh_weighted_cumulation.register_fake
def _(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    query_weight: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    key_weight: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    return value.new_empty((value.shape[0], query_codes.shape[1], value.shape[2]))
