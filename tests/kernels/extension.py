"""The compiled extensions as the kernel tests get them: a broken build fails, never skips.

Why: a test that skips on any build error turns a compile error into a green
run. Here a test skips only where a tool the build needs is missing (no C++
compiler or ninja; for CUDA also no CUDA torch, no nvcc or no GPU), saying
which; where they are all present, a build that fails fails the test with the
compiler's message.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest

from src.kernels import build


def compiled_extension(
    device_type: str = "cpu", load: Callable[[], types.ModuleType] | None = None
) -> types.ModuleType:
    """The built extension for ``device_type`` (``build.extension``), or ``load()`` if given.

    Skips the calling test where a build tool is missing; fails it where the build fails.
    """
    missing = build.missing_tool(device_type)
    if missing is not None:
        pytest.skip(f"the YOSO {device_type} kernels cannot be built here: {missing}")
    try:
        return load() if load is not None else build.extension(device_type)
    except RuntimeError as error:
        pytest.fail(
            f"the YOSO {device_type} extension failed to build although its tools are "
            f"present:\n{error}",
            pytrace=False,
        )
