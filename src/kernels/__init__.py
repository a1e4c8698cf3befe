"""YOSO attention ops: one entry point (``yoso_attention``) over the reference and compiled kernels.

The stack, top to bottom: ``interface`` (checks inputs once) -> ``options``
(settings, validated once) -> ``pipeline`` (prepare, hash, cumulate, finish)
-> ``autograd`` (the paper's surrogate backward) -> the kernels chosen by
``backends``: ``ops`` (compiled, built by ``build``) or ``reference`` (the
definition of correctness).
"""

from src.kernels.interface import sequence_conv, yoso_attention
from src.kernels.options import YOSOOptions

__all__ = ["YOSOOptions", "sequence_conv", "yoso_attention"]
