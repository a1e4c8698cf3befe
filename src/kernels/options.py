"""The settings of one YOSO attention, validated once, with the only set of defaults.

Everything below the public entry points (the pipeline, the autograd functions,
the ops) trusts a ``YOSOOptions``: no layer checks these values again.
``YOSOAttention`` builds one when the model is built, so a bad config fails
there, not at the first batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

Hashing = Literal["gaussian", "fast"]
Precision = Literal["auto", "float32", "bfloat16"]
HASHINGS: tuple[str, ...] = ("gaussian", "fast")
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
BACKENDS: tuple[str, ...] = ("auto", "reference", "cpu", "cuda")
MAX_HASH_CODE_LEN = 16  # 2**tau table rows per hash: beyond 16 the tables are useless and huge


@dataclass(frozen=True)
class YOSOOptions:
    """How YOSO attention samples, differentiates and runs.

    Args:
        hash_code_len: ``tau`` bits per hash. No default: tau belongs to the task
            (ListOps 11, Text/Retrieval 12, Image/Pathfinder 10, language models 9).
        num_hashes: ``m`` hashes of the sampling estimator (its error falls like 1/sqrt(m)).
        expectation: YOSO-E (exact expectation, quadratic) instead of sampling.
        lsh_backward: the paper's linear LSH backward; False uses the quadratic
            expectation backward.
        hashing: ``"gaussian"`` projections or the ``"fast"`` Hadamard hash.
        backend: ``None``/``"auto"`` (compiled kernels for the tensors' device, the
            reference where they cannot be built), ``"reference"``, ``"cpu"``, ``"cuda"``;
            ``None`` also reads ``$YOSO_BACKEND``.
        normalize_output: L2-normalise each output row (the paper's default).
        exact_gradient: with ``expectation``, plain autograd of YOSO-E (the true
            derivative of the collision probability) instead of the paper's surrogate;
            quadratic memory, a reference for tests and studies.
        backward_precision: operands of the LSH backward's per-pair contractions
            (sums always fp32): ``"auto"`` (bf16 for bf16 queries, as ``bf16-mixed``
            training sends, float32 otherwise), ``"float32"`` or ``"bfloat16"``.
    """

    hash_code_len: int
    num_hashes: int = 32
    expectation: bool = False
    lsh_backward: bool = True
    hashing: Hashing = "gaussian"
    backend: str | None = None
    normalize_output: bool = True
    exact_gradient: bool = False
    backward_precision: Precision = "auto"

    def __post_init__(self) -> None:
        if not _is_int(self.hash_code_len) or not 1 <= self.hash_code_len <= MAX_HASH_CODE_LEN:
            raise ValueError(
                f"hash_code_len must be an int in [1, {MAX_HASH_CODE_LEN}] "
                f"(the paper uses 8-12), got {self.hash_code_len!r}"
            )
        if not _is_int(self.num_hashes) or self.num_hashes < 1:
            raise ValueError(f"num_hashes must be an int >= 1, got {self.num_hashes!r}")
        _check_choice("hashing", self.hashing, HASHINGS)
        _check_choice("backward_precision", self.backward_precision, PRECISIONS)
        if self.backend is not None:
            _check_choice("backend", self.backend, BACKENDS, what="YOSO backend")
        if self.exact_gradient and not self.expectation:
            raise ValueError("exact_gradient=True needs expectation=True (sampling has no exact gradient)")

    def replace(self, **changes: object) -> YOSOOptions:
        """A validated copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def bf16_backward(self, query_dtype: torch.dtype) -> bool:
        """Whether the LSH backward contracts in bf16 for queries of ``query_dtype``."""
        if self.backward_precision == "auto":
            return query_dtype == torch.bfloat16
        return self.backward_precision == "bfloat16"

    def fast_hash_width(self, head_dim: int) -> int:
        """Padded width ``D`` of the Hadamard hash: a power of two >= max(head_dim, tau)."""
        return 1 << max(0, math.ceil(math.log2(max(head_dim, self.hash_code_len))))

    def fast_hash_parts(self, head_dim: int) -> int:
        """Random rotations the fast hash needs: each yields ``D // tau`` hashes."""
        per_part = self.fast_hash_width(head_dim) // self.hash_code_len
        return -(-self.num_hashes // per_part)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: object, choices: tuple[str, ...], what: str | None = None) -> None:
    if value not in choices:
        label = what or name
        raise ValueError(f"unknown {label} {value!r}: {name} must be one of {choices}")
