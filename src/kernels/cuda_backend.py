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

import torch

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
    from src.kernels.compiled_ops import make_backend

    return make_backend("cuda", build_extension(verbose=verbose))
