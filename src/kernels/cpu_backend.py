"""Compiled C++ CPU backend of the YOSO ops (``csrc/cpu``), built on first use.

Why: the reference ops are correct but slow on CPU (the weighted cumulation
of the LSH backward builds ``w x dv``-wide tables per hash); the C++ kernels
compute the same functions with per-bucket GEMMs, OpenMP over batch-heads x
hashes, and SIMD variants chosen at run time (AVX-512 / AVX2 / baseline).

``load()`` returns a namespace with ``name = "cpu"``, ``device_type = "cpu"``
and the four ops with the Python signatures of ``reference.py`` (the wrappers
shared with the CUDA backend live in ``compiled_ops.py``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

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


def load(verbose: bool = False) -> SimpleNamespace:
    """Build the extension (first use) and return the ``"cpu"`` backend.

    Raises:
        RuntimeError: no compiler / ninja, or the build failed.
    """
    from src.kernels.compiled_ops import make_backend

    return make_backend("cpu", build_extension(verbose=verbose))
