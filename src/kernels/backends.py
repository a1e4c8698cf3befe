"""Which kernels run: the compiled ops (``ops.py``) or the plain-PyTorch ``reference``.

Both modules implement the ``Kernels`` protocol below with the same names and
signatures, so the pipeline calls ``kernels.lsh_cumulation(...)`` and a reader
finds the two implementations by name. The choice is made once per call from
the options' ``backend`` (or ``$YOSO_BACKEND``) and the tensors' device; the
process says once, on stderr, which kernels ran and why.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Protocol

import torch
from torch import Tensor

from src.kernels import build, ops, reference
from src.kernels.options import BACKENDS

BACKEND_ENV_VAR = "YOSO_BACKEND"
_ANNOUNCED: set[str] = set()


class Kernels(Protocol):
    """The ops every backend provides (semantics: the functions of ``reference.py``)."""

    def hash_gaussian(self, x: Tensor, projection: Tensor, hash_code_len: int) -> Tensor: ...

    def hash_fast(self, x: Tensor, signs: Tensor, num_hashes: int, hash_code_len: int) -> Tensor: ...

    def lsh_cumulation(self, query_mask: Tensor, query_codes: Tensor, key_mask: Tensor,
                       key_codes: Tensor, value: Tensor, hash_code_len: int) -> Tensor: ...

    def lsh_backward(self, query_mask: Tensor, query_codes: Tensor, query: Tensor, key_mask: Tensor,
                     key_codes: Tensor, key: Tensor, value: Tensor, grad: Tensor, hash_code_len: int,
                     bf16: bool = False) -> tuple[Tensor, Tensor, Tensor]: ...

    def sequence_conv(self, value: Tensor, mask: Tensor, weight: Tensor) -> Tensor: ...

    def sequence_conv_add(self, base: Tensor, base_scale: Tensor | None, value: Tensor, mask: Tensor,
                          weight: Tensor) -> Tensor: ...

    def sequence_conv_backward(self, grad: Tensor, value: Tensor, mask: Tensor,
                               weight: Tensor) -> tuple[Tensor, Tensor]: ...


def select_kernels(device: torch.device, backend: str | None = None) -> Kernels:
    """The kernels for tensors on ``device`` under ``backend`` (None: ``$YOSO_BACKEND`` or auto)."""
    name = backend or os.environ.get(BACKEND_ENV_VAR) or "auto"
    source = "backend" if backend else f"${BACKEND_ENV_VAR}"
    if name not in BACKENDS:
        raise ValueError(f"unknown YOSO backend {name!r} (from {source}); choose one of {BACKENDS}")
    if name == "reference":
        _announce(device, "YOSO: reference kernels (chosen by name)")
        return reference
    if name != "auto" and name != device.type:
        fix = (f"unset {BACKEND_ENV_VAR} or set it to one of {', '.join(BACKENDS)}" if not backend
               else "choose backend='auto'")
        raise ValueError(
            f"YOSO backend {name!r} (from {source}) runs on {name} tensors, got {device.type} tensors; "
            f"move the tensors or {fix}"
        )
    if device.type not in ops.DEVICE_TYPES:
        _announce(device, f"YOSO: reference kernels (no compiled kernels for {device.type} tensors)")
        return reference
    try:
        extension = build.extension(device.type)
    except RuntimeError as error:
        if name != "auto":
            raise
        if _announce(device, f"YOSO: reference kernels (the compiled ones are unavailable: {error})"):
            warnings.warn(f"{error}. Falling back to the (slower) PyTorch reference kernels.",
                          RuntimeWarning, stacklevel=3)
        return reference
    isa = f" ({extension.active_isa()})" if device.type == "cpu" else ""
    _announce(device, f"YOSO: compiled {device.type.upper()} kernels{isa}")
    return ops


def check_backend_choice(backend: str | None = None) -> None:
    """Refuse, before any work, a backend (``backend`` or ``$YOSO_BACKEND``) this machine cannot run.

    ``select_kernels`` would only notice at the first forward pass, after the data is
    prepared; the message names where the choice came from and the valid values.
    """
    name = backend or os.environ.get(BACKEND_ENV_VAR) or "auto"
    source = f"backend={name!r}" if backend else f"{BACKEND_ENV_VAR}={name}"
    valid = ", ".join(BACKENDS)
    if name not in BACKENDS:
        raise ValueError(f"{source} is not a YOSO backend; valid values: {valid} "
                         f"(auto: compiled kernels for the tensors' device)")
    if name == "cuda" and not torch.cuda.is_available():
        fix = f"unset {BACKEND_ENV_VAR} or set it to auto" if not backend else "use backend='auto'"
        raise ValueError(f"{source} but this machine has no usable CUDA GPU (torch.cuda.is_available() "
                         f"is False); {fix} (valid values: {valid})")


def _announce(device: torch.device, message: str) -> bool:
    """Print ``message`` the first time this device type's kernels are chosen; True if printed."""
    if device.type in _ANNOUNCED:
        return False
    _ANNOUNCED.add(device.type)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # one line per machine under DDP, not per rank
        print(message, file=sys.stderr, flush=True)
    return True
