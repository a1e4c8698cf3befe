"""The CUDA kernels' own source, run on the CPU by the emulator (tests/kernels/cuda_emulator.py).

Without a GPU this is what checks the CUDA kernels: results against the
reference, and, with ThreadSanitizer, that they are free of data races while a
removed atomic or barrier is caught. Needs g++ (C++20) and libtsan; skipped
otherwise. Slow-ish (builds of the translated source): marked ``slow``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.kernels import cuda_emulator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++"),
]


def _has_tsan() -> bool:
    found = subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True, text=True)
    return found.returncode == 0 and found.stdout.strip() not in ("", "libtsan.so")


def test_emulated_kernels_match_reference():
    cuda_emulator.check_emulate()


@pytest.mark.skipif(not _has_tsan(), reason="needs libtsan")
@pytest.mark.parametrize("mutation", [None, "atomic", "barrier"])
def test_races_are_caught(mutation):
    """The kernels as written run race-free; with one atomicAdd made a plain `+=`, or the
    barrier between writing and reading the shared S tile removed, TSan reports a race."""
    done = cuda_emulator.run_under_tsan(mutation)
    if mutation is None:
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert done.returncode == cuda_emulator.TSAN_EXIT_CODE, done.stderr[-3000:]
        assert "data race" in done.stderr
