"""Compiled C++ CPU backend of the YOSO ops (``csrc/cpu``), built on first use.

Why: the reference ops are correct but slow on CPU (the weighted cumulation
of the LSH backward builds ``w x dv``-wide tables per hash); the C++ kernels
compute the same functions with per-bucket GEMMs, OpenMP over batch-heads x
hashes, and SIMD variants chosen at run time (AVX-512 / AVX2 / baseline).

``load()`` returns a namespace with ``name = "cpu"``, ``device_type = "cpu"``
and the four ops with the Python signatures of ``reference.py``. The wrappers
convert arguments (half/bfloat16 -> float32, masks -> bool, codes -> int32,
contiguous), validate shapes with clear errors, and call the ``yoso::*``
custom ops (``custom_ops.py``) so that ``torch.compile`` can trace them.
Outputs are float32 (codes int32).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from src.kernels import reference

EXTENSION_NAME = "yoso_cpu"
CSRC_DIR = Path(__file__).resolve().parent / "csrc" / "cpu"
SOURCES = (CSRC_DIR / "yoso_cpu.cpp", CSRC_DIR / "yoso_cpu_kernels.cpp")
# No -march=native: the library may be shared between machines. The kernels
# carry their own AVX2 / AVX-512 variants behind a runtime CPU check.
# -ffp-contract=fast lets the compiler use FMA in those variants (ISO C++ mode
# disables it by default).
EXTRA_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast"]
EXTRA_LDFLAGS = ["-fopenmp"]

_BUILT: dict[str, ModuleType] = {}


def build_extension(verbose: bool = False) -> ModuleType:
    """Compile (first use) or load (cached) the C++ extension; RuntimeError if impossible."""
    if EXTENSION_NAME not in _BUILT:
        from src.kernels import build  # not at import time: importing must never compile

        _BUILT[EXTENSION_NAME] = build.load_extension(
            EXTENSION_NAME,
            list(SOURCES),
            extra_cflags=EXTRA_CFLAGS,
            extra_ldflags=EXTRA_LDFLAGS,
            verbose=verbose,
        )
    return _BUILT[EXTENSION_NAME]


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous()


def _mask(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.bool).contiguous()


def _codes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.int32).contiguous()


def _shape_error(what: str, **tensors: torch.Tensor) -> ValueError:
    shapes = ", ".join(f"{name}={list(t.shape)}" for name, t in tensors.items())
    return ValueError(f"yoso cpu backend: {what}; got {shapes}")


def _check_cpu(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.device.type != "cpu":
            raise ValueError(f"yoso cpu backend: {name} is on {tensor.device}, expected cpu")


def _check_sides(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    value: torch.Tensor,
) -> None:
    _check_cpu(
        query_mask=query_mask, query_codes=query_codes, key_mask=key_mask, key_codes=key_codes,
        value=value,
    )
    if query_codes.dim() != 3 or key_codes.dim() != 3 or value.dim() != 3:
        raise _shape_error(
            "codes must be [BH, n, m] and value [BH, nk, dv]",
            query_codes=query_codes, key_codes=key_codes, value=value,
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
            query_mask=query_mask, query_codes=query_codes, key_mask=key_mask, key_codes=key_codes,
        )
    if tuple(value.shape[:2]) != (bh, nk):
        raise _shape_error("value must be [BH, nk, dv]", value=value, key_codes=key_codes)


def hash_gaussian(x: torch.Tensor, projection: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Random-hyperplane LSH codes ``[BH, n, m]`` int32 (``reference.hash_gaussian``)."""
    from src.kernels import custom_ops

    reference.check_hash_code_len(hash_code_len)
    _check_cpu(x=x, projection=projection)
    if (
        x.dim() != 3
        or projection.dim() != 3
        or projection.shape[:2] != (x.shape[0], x.shape[2])
        or projection.shape[2] % hash_code_len
    ):
        raise _shape_error(
            f"need x [BH, n, d] and projection [BH, d, m * {hash_code_len}]",
            x=x, projection=projection,
        )
    return custom_ops.hash_gaussian(_float(x), _float(projection), hash_code_len)


def hash_fast(
    x: torch.Tensor, signs: torch.Tensor, num_hashes: int, hash_code_len: int
) -> torch.Tensor:
    """Hadamard LSH codes ``[BH, n, num_hashes]`` int32 (``reference.hash_fast``)."""
    from src.kernels import custom_ops

    reference.check_hash_code_len(hash_code_len)
    _check_cpu(x=x, signs=signs)
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
            x=x, signs=signs,
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
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i) = h(k_j)] v_j`` (``reference.lsh_cumulation``)."""
    from src.kernels import custom_ops

    reference.check_hash_code_len(hash_code_len)
    _check_sides(query_mask, query_codes, key_mask, key_codes, value)
    return custom_ops.lsh_cumulation(
        _mask(query_mask), _codes(query_codes), _mask(key_mask), _codes(key_codes), _float(value),
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
) -> torch.Tensor:
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i)=h(k_j)] (a_i . b_j) v_j`` (dQ / dK)."""
    from src.kernels import custom_ops

    reference.check_hash_code_len(hash_code_len)
    _check_sides(query_mask, query_codes, key_mask, key_codes, value)
    _check_cpu(query_weight=query_weight, key_weight=key_weight)
    if (
        query_weight.dim() != 3
        or key_weight.dim() != 3
        or query_weight.shape[:2] != query_codes.shape[:2]
        or key_weight.shape[:2] != key_codes.shape[:2]
        or query_weight.shape[2] != key_weight.shape[2]
    ):
        raise _shape_error(
            "weights must be [BH, nq, w] and [BH, nk, w] matching the codes",
            query_weight=query_weight, key_weight=key_weight, query_codes=query_codes,
            key_codes=key_codes,
        )
    return custom_ops.lsh_weighted_cumulation(
        _mask(query_mask), _codes(query_codes), _float(query_weight), _mask(key_mask),
        _codes(key_codes), _float(key_weight), _float(value), hash_code_len,
    )


def load(verbose: bool = False) -> SimpleNamespace:
    """Build the extension (first use) and return the ``"cpu"`` backend.

    Raises:
        RuntimeError: no compiler / ninja, or the build failed.
    """
    extension = build_extension(verbose=verbose)
    from src.kernels import custom_ops

    custom_ops.register_extension("cpu", extension)
    return SimpleNamespace(
        name="cpu",
        device_type="cpu",
        extension=extension,
        hash_gaussian=hash_gaussian,
        hash_fast=hash_fast,
        lsh_cumulation=lsh_cumulation,
        lsh_weighted_cumulation=lsh_weighted_cumulation,
    )
