"""Runs a check once per CPU instruction-set variant of the compiled kernels."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from src.kernels import build


def each_cpu_isa() -> Iterator[str]:
    """Yields every variant this CPU runs, each made active in turn; the best is restored after.

    Skips the calling test when the CPU extension cannot be built here.
    """
    try:
        extension = build.extension("cpu")
    except RuntimeError as error:
        pytest.skip(str(error))
    best = extension.active_isa()
    try:
        for name in extension.supported_isas().split(","):
            assert extension.set_isa(name)
            yield name
    finally:
        assert extension.set_isa(best)
