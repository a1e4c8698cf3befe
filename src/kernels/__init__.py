"""YOSO attention ops: one entry point (``yoso_attention``) over the reference and compiled ops."""

from src.kernels.interface import (
    draw_hash_parameters,
    hash_codes,
    normalize_rows,
    select_ops,
    sequence_conv,
    yoso_attention,
)

__all__ = [
    "draw_hash_parameters",
    "hash_codes",
    "normalize_rows",
    "select_ops",
    "sequence_conv",
    "yoso_attention",
]
