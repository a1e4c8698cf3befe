"""YOSO attention ops: one entry point (``yoso_attention``) over several backends."""

import importlib

from src.kernels.backends import available_backends, register_backend, resolve_backend
from src.kernels.interface import (
    draw_hash_parameters,
    hash_codes,
    normalize_rows,
    yoso_attention,
)

# Compiled backends are built lazily, on first use (see src/kernels/build.py).
register_backend("cpu", lambda: importlib.import_module("src.kernels.cpu_backend").load())
register_backend("cuda", lambda: importlib.import_module("src.kernels.cuda_backend").load())

__all__ = [
    "available_backends",
    "draw_hash_parameters",
    "hash_codes",
    "normalize_rows",
    "register_backend",
    "resolve_backend",
    "yoso_attention",
]
