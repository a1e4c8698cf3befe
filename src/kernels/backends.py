"""Backend registry: which implementation of the YOSO ops runs for a tensor.

A backend is any object with the four op functions of ``reference.py``
(``hash_gaussian``, ``hash_fast``, ``lsh_cumulation``, ``lsh_weighted_cumulation``)
plus ``name``. Compiled backends register a *loader* here so that importing the
package never compiles anything; the first call that needs a backend builds it.

Selection (``resolve_backend``):
- an explicit ``backend=`` argument, else the ``YOSO_BACKEND`` environment
  variable, else ``"auto"``;
- ``"auto"`` picks the compiled backend for the tensor's device type
  (``cpu`` -> ``"cpu"``, ``cuda`` -> ``"cuda"``) and falls back to the
  reference, with one warning, when it cannot be built;
- a named backend that cannot be built is an error (the user asked for it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from src.kernels import reference

BACKEND_ENV_VAR = "YOSO_BACKEND"

Backend = Any  # a module or namespace exposing the reference op signatures
_LOADERS: dict[str, Callable[[], Backend]] = {}
_LOADED: dict[str, Backend] = {}
_FAILED: dict[str, str] = {}
_DEVICE_DEFAULT = {"cpu": "cpu", "cuda": "cuda"}

REFERENCE: Backend = SimpleNamespace(
    name="reference",
    hash_gaussian=reference.hash_gaussian,
    hash_fast=reference.hash_fast,
    lsh_cumulation=reference.lsh_cumulation,
    lsh_weighted_cumulation=reference.lsh_weighted_cumulation,
)
_LOADED["reference"] = REFERENCE


def register_backend(name: str, loader: Callable[[], Backend | ModuleType]) -> None:
    """Register a lazily built backend; ``loader`` raises if it cannot be built."""
    _LOADERS[name] = loader
    _LOADED.pop(name, None)
    _FAILED.pop(name, None)


def available_backends() -> list[str]:
    """Names that may be requested (whether they build is only known on use)."""
    return sorted({"reference", "auto", *_LOADERS})


def load_backend(name: str) -> Backend:
    """Build (once) and return a named backend; raises RuntimeError if it cannot."""
    if name in _LOADED:
        return _LOADED[name]
    if name not in _LOADERS:
        raise ValueError(f"unknown YOSO backend {name!r}; choose one of {available_backends()}")
    if name in _FAILED:
        raise RuntimeError(f"YOSO backend {name!r} is unavailable: {_FAILED[name]}")
    try:
        backend = _LOADERS[name]()
    except Exception as error:  # a missing compiler, toolkit or GPU all land here
        _FAILED[name] = f"{type(error).__name__}: {error}"
        raise RuntimeError(f"YOSO backend {name!r} is unavailable: {_FAILED[name]}") from error
    _LOADED[name] = backend
    return backend


def resolve_backend(device: torch.device, requested: str | None = None) -> Backend:
    """The backend that computes the ops for tensors on ``device``."""
    name = requested or os.environ.get(BACKEND_ENV_VAR, "auto") or "auto"
    if name != "auto":
        backend = load_backend(name)
        _check_device(backend, device)
        return backend
    default = _DEVICE_DEFAULT.get(device.type)
    if default is None or default not in _LOADERS:
        return REFERENCE
    try:
        return load_backend(default)
    except RuntimeError as error:
        _warn_fallback_once(default, str(error))
        return REFERENCE


def _check_device(backend: Backend, device: torch.device) -> None:
    supported = getattr(backend, "device_type", None)
    if supported is not None and supported != device.type:
        raise ValueError(
            f"YOSO backend {backend.name!r} runs on {supported} tensors, got {device.type}; "
            f"move the tensors or choose backend='auto'"
        )


_WARNED: set[str] = set()


def _warn_fallback_once(name: str, reason: str) -> None:
    if name in _WARNED:
        return
    _WARNED.add(name)
    warnings.warn(
        f"{reason}. Falling back to the (slower) PyTorch reference implementation. "
        f"Set {BACKEND_ENV_VAR}=reference to silence this warning.",
        RuntimeWarning,
        stacklevel=3,
    )
