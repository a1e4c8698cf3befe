"""YOSO attention ops: one entry point (``yoso_attention``) over several backends."""

from src.kernels.backends import available_backends, register_backend, resolve_backend
from src.kernels.interface import (
    draw_hash_parameters,
    hash_codes,
    normalize_rows,
    yoso_attention,
)

__all__ = [
    "available_backends",
    "draw_hash_parameters",
    "hash_codes",
    "normalize_rows",
    "register_backend",
    "resolve_backend",
    "yoso_attention",
]
