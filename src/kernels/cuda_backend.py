"""CUDA backend of the YOSO ops: JIT-built kernels in ``csrc/cuda``.

``load()`` returns a namespace with the four ops of ``reference.py`` (same
Python signatures) that run on CUDA tensors. The Python wrappers only convert
arguments to what the kernels take (float32 data, bool masks, int32 codes,
contiguous memory); the binding validates devices and shapes and the kernels
accumulate in float32.

The extension is compiled on first use through ``src.kernels.build`` (a cache
keyed by the sources, the torch version and the GPU architectures, so later
runs only load the shared library). Nothing here is built at import time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from src.kernels import reference

EXTENSION_NAME = "yoso_cuda_kernels"
CSRC_DIR = Path(__file__).resolve().parent / "csrc" / "cuda"
SOURCES = (CSRC_DIR / "binding.cpp", CSRC_DIR / "yoso_kernels.cu")
# No --use_fast_math: the kernels are sums and sign tests; keep IEEE float32
# rounding so that results match the reference within ordinary float32 error.
EXTRA_CUDA_CFLAGS = ["-O3", "-std=c++17", "-lineinfo"]
EXTRA_CFLAGS = ["-O3"]

_BUILT: dict[str, ModuleType] = {}  # the extension once built in this process


def wheel_cuda_include_dirs() -> list[Path]:
    """Header folders shipped by the torch wheel's ``nvidia`` packages.

    CUDA 13 builds of torch put the toolkit headers they were built with (among
    them ``cusparse.h``, which torch's CUDA headers include and which a bare
    toolkit may lack) under ``site-packages/nvidia/cu13/include``.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    major = (torch.version.cuda or "").split(".")[0]
    found = []
    for location in spec.submodule_search_locations:
        candidate = Path(location) / f"cu{major}" / "include"
        if major and candidate.is_dir():
            found.append(candidate)
    return found


def build_extension(verbose: bool = False) -> ModuleType:
    """Compile (or load from the build cache) the CUDA extension.

    Needs a CUDA build of torch and the CUDA toolkit (``nvcc``), not a GPU: the
    build-only CI check calls this directly.
    """
    if EXTENSION_NAME in _BUILT:
        return _BUILT[EXTENSION_NAME]
    if torch.version.cuda is None:
        raise RuntimeError(
            f"torch {torch.__version__} was built without CUDA; install a CUDA build of torch"
        )
    from src.kernels import build  # imported here: the package must not compile on import

    module = build.load_extension(
        EXTENSION_NAME,
        list(SOURCES),
        cuda=True,
        extra_cflags=EXTRA_CFLAGS,
        extra_cuda_cflags=EXTRA_CUDA_CFLAGS,
        extra_include_paths=[str(path) for path in wheel_cuda_include_dirs()],
        verbose=verbose,
    )
    _BUILT[EXTENSION_NAME] = module
    return module


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous()


def _mask(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.bool).contiguous()


def _codes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.int32).contiguous()


def _make_ops(ext: Any) -> SimpleNamespace:
    def hash_gaussian(
        x: torch.Tensor, projection: torch.Tensor, hash_code_len: int
    ) -> torch.Tensor:
        reference.check_hash_code_len(hash_code_len)
        return ext.hash_gaussian(_float(x), _float(projection), hash_code_len)

    def hash_fast(
        x: torch.Tensor, signs: torch.Tensor, num_hashes: int, hash_code_len: int
    ) -> torch.Tensor:
        reference.check_hash_code_len(hash_code_len)
        width = signs.shape[-1]
        per_part = width // hash_code_len
        if (
            x.dim() != 3
            or signs.dim() != 4
            or width != reference.fast_hash_dim(x.shape[-1], hash_code_len)
            or signs.shape[2] * per_part < num_hashes
        ):
            raise ValueError(
                f"signs of shape {tuple(signs.shape)} do not fit x of shape {tuple(x.shape)}, "
                f"num_hashes={num_hashes}, hash_code_len={hash_code_len}"
            )
        return ext.hash_fast(_float(x), _float(signs), num_hashes, hash_code_len)

    def lsh_cumulation(
        query_mask: torch.Tensor,
        query_codes: torch.Tensor,
        key_mask: torch.Tensor,
        key_codes: torch.Tensor,
        value: torch.Tensor,
        hash_code_len: int,
    ) -> torch.Tensor:
        reference.check_hash_code_len(hash_code_len)
        return ext.lsh_cumulation(
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
    ) -> torch.Tensor:
        reference.check_hash_code_len(hash_code_len)
        return ext.lsh_weighted_cumulation(
            _mask(query_mask),
            _codes(query_codes),
            _float(query_weight),
            _mask(key_mask),
            _codes(key_codes),
            _float(key_weight),
            _float(value),
            hash_code_len,
        )

    return SimpleNamespace(
        name="cuda",
        device_type="cuda",
        extension=ext,
        hash_gaussian=hash_gaussian,
        hash_fast=hash_fast,
        lsh_cumulation=lsh_cumulation,
        lsh_weighted_cumulation=lsh_weighted_cumulation,
    )


def load(verbose: bool = False) -> SimpleNamespace:
    """Build the extension and return the ``"cuda"`` backend.

    Raises:
        RuntimeError: torch has no CUDA support, no GPU is visible, or the build failed.
    """
    if torch.version.cuda is None:
        raise RuntimeError(
            f"the CUDA backend needs a CUDA build of torch; torch {torch.__version__} has none"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "the CUDA backend needs a GPU: torch.cuda.is_available() is False "
            "(no NVIDIA driver or no visible device)"
        )
    return _make_ops(build_extension(verbose=verbose))
