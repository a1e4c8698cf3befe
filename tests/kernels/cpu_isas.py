"""Runs a check once per CPU instruction-set variant of the compiled kernels."""

from __future__ import annotations

from collections.abc import Iterator

from tests.kernels.extension import compiled_extension


def each_cpu_isa() -> Iterator[str]:
    """Yields every variant this CPU runs, each made active in turn; the best is restored after.

    Skips the calling test where no compiler exists; fails it where the build fails.
    """
    extension = compiled_extension("cpu")
    best = extension.active_isa()
    try:
        for name in extension.supported_isas().split(","):
            assert extension.set_isa(name)
            yield name
    finally:
        assert extension.set_isa(best)
