"""The CUDA kernels' own source, run on the CPU by the emulator (tests/kernels/cuda_emulator.py).

Without a GPU this is what checks the CUDA kernels:
- results against the reference, also with every grid capped at two blocks so that every
  grid-stride loop runs several rounds;
- every launch's dynamic shared memory against the limit its kernel opted in to;
- with AddressSanitizer, that no kernel reads or writes out of bounds, while an injected
  overflow is caught;
- with ThreadSanitizer, that the kernels are free of data races, while a removed atomic or
  barrier is caught.
Needs g++ (C++20), and libasan / libtsan for the sanitizer tests; skipped otherwise. Slow-ish
(builds of the translated source): marked ``slow``.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from src.kernels import reference as ref
from tests.kernels import cuda_emulator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++"),
]

CUDA_ERROR_INVALID_VALUE = 1

# Two kernels that use dynamic shared memory; only `opted_kernel` may opt in to more.
OPT_IN_SOURCE = r"""
#include <cuda_runtime_api.h>
#include <cuda_runtime.h>

__global__ void opted_kernel(float* out) {
  extern __shared__ float opted_shared[];
  opted_shared[threadIdx.x] = 1.0f;
  out[threadIdx.x] = opted_shared[threadIdx.x];
}

__global__ void plain_kernel(float* out) {
  extern __shared__ float plain_shared[];
  plain_shared[threadIdx.x] = 2.0f;
  out[threadIdx.x] = plain_shared[threadIdx.x];
}

extern "C" int opt_in(int bytes) {
  return cudaFuncSetAttribute(opted_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

extern "C" int launch(int opted, int smem_bytes, float* out) {
  if (opted) {
    opted_kernel<<<1, 1, smem_bytes>>>(out);
  } else {
    plain_kernel<<<1, 1, smem_bytes>>>(out);
  }
  return cudaGetLastError();
}
"""


def test_emulated_kernels_match_reference():
    cuda_emulator.check_emulate()


def test_grid_stride_loops_run_several_rounds():
    """Every grid capped at 2 blocks (YOSO_MAX_BLOCKS): all kernels still match the reference."""
    cuda_emulator.check_small_grid()


def test_shared_memory_is_checked_per_launch_against_the_kernels_opt_in():
    with tempfile.TemporaryDirectory() as tmp:
        lib = cuda_emulator.build_emulation(Path(tmp), OPT_IN_SOURCE)
        lib.launch.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        out = torch.zeros(4)
        ptr = ctypes.c_void_p(out.data_ptr())
        kib = 1024
        assert lib.launch(1, 48 * kib, ptr) == 0 and lib.launch(0, 48 * kib, ptr) == 0
        assert lib.launch(1, 48 * kib + 4, ptr) == CUDA_ERROR_INVALID_VALUE  # no opt-in yet
        assert lib.opt_in(100 * kib) == 0
        assert lib.launch(1, 100 * kib, ptr) == 0
        assert lib.launch(1, 100 * kib + 4, ptr) == CUDA_ERROR_INVALID_VALUE  # above its opt-in
        assert lib.launch(0, 64 * kib, ptr) == CUDA_ERROR_INVALID_VALUE  # the other kernel's
        assert lib.opt_in(228 * kib) == CUDA_ERROR_INVALID_VALUE  # above the device's limit
        log = cuda_emulator.launch_log(lib)
        assert [(name, status) for name, _, _, status in log] == [
            ("opted_kernel", 0), ("plain_kernel", 0), ("opted_kernel", 1), ("opted_kernel", 0),
            ("opted_kernel", 1), ("plain_kernel", 1)]
        assert out[0] == 1.0


def test_fast_hash_launch_fails_without_its_opt_in():
    """The real fast hash at width 16384 (64 KiB per block) runs (check_emulate covers it);
    with its cudaFuncSetAttribute call removed, the emulated launch fails."""
    x = torch.nn.functional.normalize(torch.randn(1, 2, 16384), dim=-1)
    signs = torch.ones(1, 3, 1, 16384)
    with tempfile.TemporaryDirectory() as tmp:
        source = cuda_emulator.mutated_source("optin")
        ops = cuda_emulator.EmulatedOps(cuda_emulator.build_emulation(Path(tmp), source))
        assert torch.equal(ops.hash_fast(x[..., :64], signs[..., :64], 3, 8),
                           ref.hash_fast(x[..., :64], signs[..., :64], 3, 8))  # small: no opt-in needed
        with pytest.raises(RuntimeError, match=f"CUDA error {CUDA_ERROR_INVALID_VALUE}"):
            ops.hash_fast(x, signs, 3, 8)
        assert cuda_emulator.launch_log(ops.lib)[-1] == ("hash_fast_kernel", 2, 16384 * 4,
                                                         CUDA_ERROR_INVALID_VALUE)


@pytest.mark.skipif(not cuda_emulator.has_sanitizer("asan"), reason="needs libasan")
@pytest.mark.parametrize("mutation", [None, "overflow"])
def test_out_of_bounds_accesses_are_caught(mutation):
    """Every emulated check runs clean under AddressSanitizer; with the packing kernel's tail
    clamp removed (it reads and writes past its tensors), ASan reports the overflow."""
    done = cuda_emulator.run_under_sanitizer("asan", mutation)
    if mutation is None:
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert done.returncode == cuda_emulator.ASAN_EXIT_CODE, done.stderr[-3000:]
        assert "heap-buffer-overflow" in done.stderr


@pytest.mark.skipif(not cuda_emulator.has_sanitizer("tsan"), reason="needs libtsan")
@pytest.mark.parametrize("mutation", [None, "atomic", "barrier", "slab_barrier", "stage_barrier",
                                      "table_barrier"])
def test_races_are_caught(mutation):
    """The kernels as written run race-free; with one atomicAdd made a plain `+=`, the
    barrier between writing and reading the shared S tile (and staged K_K, Q_Q rows) removed,
    the one between two slabs of staged G and V rows, the staged K_K and Q_Q rows loaded
    after their barrier instead of before it, or the barrier between the forward cumulation's
    scatter into its shared-memory tables and the queries' reads of them, TSan reports a race."""
    done = cuda_emulator.run_under_sanitizer("tsan", mutation)
    if mutation is None:
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert done.returncode == cuda_emulator.TSAN_EXIT_CODE, done.stderr[-3000:]
        assert "data race" in done.stderr
