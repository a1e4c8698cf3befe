"""CPU emulation of the CUDA kernels (``src/kernels/csrc/cuda/yoso_kernels.cu``).

Why: most machines that run the tests have no GPU. The ``.cu`` file is
translated to C++ (``kernel<<<grid, block, smem, stream>>>(...)`` becomes a call
to a small emulator of the CUDA runtime), compiled with g++ and called through
ctypes, so the kernels' own index arithmetic, tails, chunking, sorting and
masks are checked against ``reference.py`` without a GPU. The plain build runs
blocks one after the other (threads of a synchronising kernel as real threads
around a barrier): fast, for results. The ThreadSanitizer build (``tsan=True``,
run under ``LD_PRELOAD`` of libtsan, see ``run_under_sanitizer("tsan")``) runs every thread
of several far-apart blocks at once, so a missing atomic or barrier is a data
race that TSan reports. The AddressSanitizer build (``asan=True``, run under
``run_under_sanitizer("asan")``) reports any out-of-bounds access to a tensor or to a block's
shared memory, which the emulator allocates at exactly the requested size. A
build with ``max_blocks`` caps every grid, so grid-stride loops run several
rounds. Every launch's dynamic shared memory is checked against its kernel's
opt-in (``cudaFuncSetAttribute``, default 48 KiB) and recorded (``launch_log``).

Used by tests/kernels/test_cuda_emulation.py and ``scripts/check_cuda_build.py emulate``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the functions import torch where they use it
    import torch

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "src" / "kernels" / "csrc" / "cuda"
LAUNCHERS = (
    "yoso_pack_sign_bits",
    "yoso_hash_fast",
    "yoso_lsh_cumulation",
    "yoso_lsh_cumulation_workspace_bytes",
    "yoso_lsh_backward",
    "yoso_lsh_backward_workspace_bytes",
)
TSAN_EXIT_CODE = 66
ASAN_EXIT_CODE = 67
# Grid cap of the small-grid build: every grid-stride loop of the checked sizes runs several rounds.
SMALL_GRID_BLOCKS = 2


EMU_HEADER = r"""
// Minimal host emulation of the CUDA runtime features yoso_kernels.cu uses.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
typedef void* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
#define __global__
#define __device__
#define __host__
namespace emu {
namespace {  // internal linkage: every emulation library loaded in a process keeps its own state
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local float* shared_mem = nullptr;
inline cudaError_t last_error = cudaSuccess;
// Dynamic shared memory: 48 KiB per block unless the kernel opted in to more with
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
// at most the device's opt-in limit (an H100's 227 KiB unless a test set another
// with emu_set_device_smem_optin).
constexpr size_t kDefaultSmemLimit = 48 * 1024;
constexpr int kH100SmemOptin = 227 * 1024;
inline int device_smem_optin = kH100SmemOptin;
inline std::map<const void*, size_t> smem_optin;
// Every launch, for the tests (name, grid, block, dynamic shared memory, status).
struct LaunchRecord {
  const char* name;
  unsigned grid, block;
  size_t smem;
  int status;
};
inline std::vector<LaunchRecord> launches;
inline size_t smem_limit_of(const void* kernel) {
  const auto it = smem_optin.find(kernel);
  return it == smem_optin.end() ? kDefaultSmemLimit : it->second;
}
// Checks a launch as the CUDA runtime would; records it; true if it may run.
inline bool admit(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem) {
  int status = cudaSuccess;
  if (grid.x < 1 || block.x < 1 || block.x > 1024) {
    status = cudaErrorInvalidConfiguration;
  } else if (smem > smem_limit_of(kernel)) {
    status = cudaErrorInvalidValue;  // more dynamic shared memory than the kernel opted in to
  }
  launches.push_back(LaunchRecord{name, grid.x, block.x, smem, status});
  if (status != cudaSuccess) last_error = status;
  return status == cudaSuccess;
}
}  // namespace
}  // namespace emu
extern "C" {
// The launch log, read by tests/kernels/cuda_emulator.py through ctypes.
int64_t emu_launch_count() { return static_cast<int64_t>(emu::launches.size()); }
const char* emu_launch_name(int64_t i) { return emu::launches[i].name; }
int64_t emu_launch_grid(int64_t i) { return emu::launches[i].grid; }
int64_t emu_launch_smem(int64_t i) { return static_cast<int64_t>(emu::launches[i].smem); }
int emu_launch_status(int64_t i) { return emu::launches[i].status; }
void emu_clear_launches() { emu::launches.clear(); }
// The device's opt-in limit (cudaDevAttrMaxSharedMemoryPerBlockOptin) that the
// launchers see from now on.
void emu_set_device_smem_optin(int bytes) { emu::device_smem_optin = bytes; }
}
#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}
inline int atomicAdd(int* address, int value) {
  return std::atomic_ref<int>(*address).fetch_add(value);
}
inline cudaError_t cudaGetLastError() {
  cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = emu::device_smem_optin;
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute, int bytes) {
  if (bytes < 0 || bytes > emu::device_smem_optin) return cudaErrorInvalidValue;
  emu::smem_optin[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(bytes);
  return cudaSuccess;
}
namespace emu {
namespace {
#ifdef YOSO_EMU_CONCURRENT
constexpr unsigned kBlocksPerWave = 4;
// Runs the grid in waves of kBlocksPerWave blocks; every thread of a wave is a
// real thread, each block with its own barrier and shared memory, and a wave
// takes blocks far apart in the grid (i, i + waves, ...), which is where
// conflicting global writes come from (e.g. two hashes of one head). So a
// plain `+=` where an atomicAdd is needed, or a missing __syncthreads, is a
// real data race here: ThreadSanitizer builds (tsan=True) report it.
template <bool kSync, class F>
void launch(const void* id, const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t,
            F kernel) {
  if (!admit(id, name, grid, block, smem)) return;
  grid_dim = grid;
  block_dim = block;
  const unsigned waves = (grid.x + kBlocksPerWave - 1) / kBlocksPerWave;
  for (unsigned w = 0; w < waves; ++w) {
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    std::vector<std::vector<float>> shared;
    std::vector<std::thread> threads;
    for (unsigned b = w; b < grid.x; b += waves) {
      barriers.push_back(std::make_unique<std::barrier<>>(block.x));
      shared.emplace_back((smem + sizeof(float) - 1) / sizeof(float));
    }
    unsigned slot = 0;
    for (unsigned b = w; b < grid.x; b += waves, ++slot) {
      std::barrier<>* bar = barriers[slot].get();
      float* mem = shared[slot].data();
      for (unsigned t = 0; t < block.x; ++t) {
        threads.emplace_back([&kernel, bar, mem, b, t] {
          block_idx = dim3(b);
          thread_idx = dim3(t);
          block_barrier = bar;
          shared_mem = mem;
          kernel();
        });
      }
    }
    for (auto& th : threads) th.join();
  }
}
#else
// Runs every block; threads of a block run one after the other unless the
// kernel synchronises, in which case they are real threads sharing a barrier.
template <bool kSync, class F>
void launch(const void* id, const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t,
            F kernel) {
  if (!admit(id, name, grid, block, smem)) return;
  grid_dim = grid;
  block_dim = block;
  // Exactly the requested bytes (rounded up to whole floats), so that a read past
  // the end is a heap-buffer-overflow under AddressSanitizer.
  std::vector<float> shared((smem + sizeof(float) - 1) / sizeof(float));
  if (kSync) {
    // One real thread per thread of the block, kept for every block of the grid:
    // a barrier after each block, so the next one starts on a finished block's
    // shared memory, as a block of a real GPU reuses what a finished block left.
    std::barrier<> bar(block.x);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block.x; ++t) {
      threads.emplace_back([&, t] {
        thread_idx = dim3(t);
        block_barrier = &bar;
        shared_mem = shared.data();
        for (unsigned b = 0; b < grid.x; ++b) {
          block_idx = dim3(b);
          kernel();
          bar.arrive_and_wait();
        }
      });
    }
    for (auto& th : threads) th.join();
    return;
  }
  for (unsigned b = 0; b < grid.x; ++b) {
    for (unsigned t = 0; t < block.x; ++t) {
      block_idx = dim3(b);
      thread_idx = dim3(t);
      shared_mem = shared.data();
      kernel();
    }
  }
}
#endif  // YOSO_EMU_CONCURRENT
}  // namespace
}  // namespace emu
"""


def translate_cu(source: str) -> str:
    """Rewrite CUDA-only syntax of yoso_kernels.cu into calls to the emulator."""
    kernels = re.findall(r"__global__ void (\w+)\(", source)
    bodies = re.split(r"(?=__global__ void \w+\()", source)
    syncing = {
        name
        for name in kernels
        for body in bodies
        if body.startswith(f"__global__ void {name}(") and "__syncthreads" in body.split("\n}\n")[0]
    }
    source = source.replace("#include <cuda_runtime.h>", "")
    source = re.sub(r"extern __shared__ float (\w+)\[\];", r"float* \1 = emu::shared_mem;", source)

    def launch(match: re.Match) -> str:
        name, config, args = match.group(1), match.group(2), match.group(3)
        config_parts = _split_top_level(config)
        while len(config_parts) < 4:
            config_parts.append("0" if len(config_parts) == 2 else "nullptr")
        base = name.split("<")[0]
        sync = "true" if base in syncing else "false"
        kernel_id = f"reinterpret_cast<const void*>(&{name})"
        return (f"emu::launch<{sync}>({kernel_id}, \"{base}\", {', '.join(config_parts)}, "
                f"[&]() {{ {name}({args}); }});")

    translated, count = re.subn(
        r"(\w+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", launch, source, flags=re.DOTALL
    )
    if count == 0 or "<<<" in translated:
        raise SystemExit("could not translate the kernel launches for emulation")
    return translated


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "(<":
            depth += 1
        elif char in ")>":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def build_emulation(
    tmp: Path,
    source: str | None = None,
    tsan: bool = False,
    asan: bool = False,
    max_blocks: int | None = None,
) -> ctypes.CDLL:
    """Translate, compile and load the kernels (``source``: the .cu text, default the real file).

    ``tsan``: ThreadSanitizer build, blocks run concurrently (load it under ``run_under_sanitizer("tsan")``).
    ``asan``: AddressSanitizer build (load it under ``run_under_sanitizer("asan")``): an out-of-bounds read or
    write of a tensor or of a block's shared memory aborts with a report.
    ``max_blocks``: cap on every grid (``YOSO_MAX_BLOCKS``), so that grid-stride loops run
    several rounds.
    """
    emu_include = tmp / "include"
    emu_include.mkdir()
    (emu_include / "cuda_runtime_api.h").write_text(EMU_HEADER)
    (emu_include / "cuda_runtime.h").write_text('#include "cuda_runtime_api.h"\n')
    translated = tmp / "yoso_kernels_emu.cpp"
    translated.write_text(translate_cu(source or (CUDA_DIR / "yoso_kernels.cu").read_text()))
    library = tmp / "libyoso_emu.so"
    if tsan:
        mode = ["-O1", "-g", "-fsanitize=thread", "-DYOSO_EMU_CONCURRENT"]
    elif asan:
        mode = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    else:
        mode = ["-O2"]
    if max_blocks is not None:
        mode.append(f"-DYOSO_MAX_BLOCKS=int64_t{{{max_blocks}}}")
    cmd = [
        os.environ.get("CXX", "g++"),
        "-std=c++20",
        *mode,
        "-fPIC",
        "-shared",
        "-pthread",
        "-ffp-contract=off",
        "-Wall",
        "-Wno-unused-parameter",
        "-Wno-unknown-pragmas",
        f"-I{emu_include}",
        f"-I{CUDA_DIR}",
        str(translated),
        "-o",
        str(library),
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(library))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {  # name: (argtypes, restype)
        "yoso_pack_sign_bits": ([p, p, i64, i64, i32, p], i32),
        "yoso_hash_fast": ([p, p, p, i64, i64, i64, i64, i64, i64, i32, p], i32),
        "yoso_lsh_cumulation_workspace_bytes": ([i64, i64, i64, i32], ctypes.c_size_t),
        "yoso_lsh_cumulation": ([p] * 7 + [i64] * 5 + [i32, p], i32),
        "yoso_lsh_backward_workspace_bytes": ([i64, i64, i64, i64, i64, i32], ctypes.c_size_t),
        "yoso_lsh_backward": ([p] * 12 + [i64] * 6 + [i32, p], i32),
        "emu_launch_count": ([], i64),
        "emu_launch_name": ([i64], ctypes.c_char_p),
        "emu_launch_grid": ([i64], i64),
        "emu_launch_smem": ([i64], i64),
        "emu_launch_status": ([i64], i32),
        "emu_clear_launches": ([], None),
        "emu_set_device_smem_optin": ([i32], None),
    }
    for name, (argtypes, restype) in signatures.items():
        if hasattr(lib, name):  # a test source need not define the launchers
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = restype
    return lib


def launch_log(lib: ctypes.CDLL) -> list[tuple[str, int, int, int]]:
    """Every emulated launch so far: (kernel, grid blocks, dynamic shared bytes, CUDA status)."""
    return [
        (lib.emu_launch_name(i).decode(), lib.emu_launch_grid(i), lib.emu_launch_smem(i),
         lib.emu_launch_status(i))
        for i in range(lib.emu_launch_count())
    ]


class EmulatedOps:
    """The hashes and the cumulation on CPU tensors through the emulated launchers."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    @staticmethod
    def _ptr(tensor):
        return ctypes.c_void_p(tensor.data_ptr())

    def _check(self, status: int, op: str) -> None:
        if status != 0:
            raise RuntimeError(f"{op}: emulated launcher returned CUDA error {status}")

    def pack_sign_bits(self, projected, tau):
        """``[..., m * tau]`` floats -> ``[..., m]`` codes through the emulated packing kernel."""
        import torch

        projected = projected.float().contiguous()
        m = projected.shape[-1] // tau
        assert projected.shape[-1] == m * tau
        rows = projected.numel() // max(1, projected.shape[-1])
        codes = torch.empty(*projected.shape[:-1], m, dtype=torch.int32)
        self._check(
            self.lib.yoso_pack_sign_bits(self._ptr(projected), self._ptr(codes), rows, m, tau, None),
            "pack_sign_bits",
        )
        return codes

    def hash_gaussian(self, x, projection, tau):
        """What the binding does: one bmm of all hashes' projections, then the packing kernel."""
        import torch

        m = projection.shape[-1] // tau
        projected = torch.bmm(x.float(), projection[..., : m * tau].float())
        return self.pack_sign_bits(projected, tau)

    def hash_fast(self, x, signs, num_hashes, tau):
        import torch

        x, signs = x.float().contiguous(), signs.float().contiguous()
        bh, n, d = x.shape
        codes = torch.empty(bh, n, num_hashes, dtype=torch.int32)
        self._check(
            self.lib.yoso_hash_fast(
                self._ptr(x),
                self._ptr(signs),
                self._ptr(codes),
                bh,
                n,
                d,
                signs.shape[2],
                signs.shape[3],
                num_hashes,
                tau,
                None,
            ),
            "hash_fast",
        )
        return codes

    def _workspace(self, bh, m, dv, tau):
        """The cumulation's workspace; None (a null pointer, as the binding's empty tensor
        gives) when the launcher needs none (shared-memory tables)."""
        import torch

        size = self.lib.yoso_lsh_cumulation_workspace_bytes(bh, m, dv, tau)
        return torch.empty(size // 4, dtype=torch.float32) if size else None

    def lsh_cumulation(self, qm, qc, km, kc, value, tau):
        import torch

        qm, km = qm.bool().contiguous(), km.bool().contiguous()
        qc, kc = qc.int().contiguous(), kc.int().contiguous()
        value = value.float().contiguous()
        bh, nk, dv = value.shape
        nq, m = qc.shape[1], qc.shape[2]
        out = torch.full((bh, nq, dv), float("nan"))
        ws = self._workspace(bh, m, dv, tau)
        self._check(
            self.lib.yoso_lsh_cumulation(
                self._ptr(qm),
                self._ptr(qc),
                self._ptr(km),
                self._ptr(kc),
                self._ptr(value),
                self._ptr(out),
                None if ws is None else self._ptr(ws),
                bh,
                nq,
                nk,
                m,
                dv,
                tau,
                None,
            ),
            "lsh_cumulation",
        )
        return out


def _emulated_backward(ops: EmulatedOps, qm, qc, q, km, kc, k, v, g, tau):
    """(dQ, dK, dV) from the emulated sorted backward; outputs start as NaN (fully written)."""
    import torch

    qm, km = qm.bool().contiguous(), km.bool().contiguous()
    qc, kc = qc.int().contiguous(), kc.int().contiguous()
    q, k, v, g = (t.float().contiguous() for t in (q, k, v, g))
    bh, nq, d = q.shape
    nk, dv, m = k.shape[1], v.shape[2], qc.shape[2]
    outs = [torch.full(shape, float("nan")) for shape in ((bh, nq, d), (bh, nk, d), (bh, nk, dv))]
    size = ops.lib.yoso_lsh_backward_workspace_bytes(bh, nq, nk, m, dv, tau)
    # All bits set: NaN as a float, so that a read of a dV table row no block wrote shows.
    ws = torch.full((max(1, size // 4),), -1, dtype=torch.int32)
    status = ops.lib.yoso_lsh_backward(
        *(ops._ptr(t) for t in (qm, qc, q, km, kc, k, v, g, *outs, ws)), bh, nq, nk, m, d, dv, tau, None
    )
    ops._check(status, "lsh_backward")
    return outs


def random_codes_and_masks(gen: torch.Generator, bh: int, nq: int, nk: int, m: int, tau: int,
                           hot: float) -> tuple[torch.Tensor, ...]:
    """Query and key codes (a share ``hot`` of them in bucket 1, so some buckets are full) and
    masks with about 20 % padding: ``qc, kc, qm, km``."""
    import torch

    qc = torch.randint(0, 2**tau, (bh, nq, m), generator=gen, dtype=torch.int32)
    kc = torch.randint(0, 2**tau, (bh, nk, m), generator=gen, dtype=torch.int32)
    qc[torch.rand(qc.shape, generator=gen) < hot] = 1
    kc[torch.rand(kc.shape, generator=gen) < hot] = 1
    qm = torch.rand(bh, nq, generator=gen) > 0.2
    km = torch.rand(bh, nk, generator=gen) > 0.2
    return qc, kc, qm, km


def check_emulated_backward(ops: EmulatedOps) -> int:
    """The sorted CUDA backward against reference.lsh_backward: odd shapes, padding, every
    path (direct tiles larger than one tile, per-bucket tables, skewed buckets, tau 16)."""
    import torch

    from src.kernels import reference as ref

    gen = torch.Generator().manual_seed(1)
    cases = [  # (bh, nq, nk, d, dv, m, tau, hot): hot = share of rows forced into bucket 1
        (1, 1, 1, 1, 1, 1, 1, 0.0),
        (2, 31, 33, 24, 24, 3, 3, 0.0),
        (3, 70, 45, 32, 7, 4, 2, 0.5),
        (2, 40, 50, 8, 8, 5, 4, 0.9),
        (1, 90, 80, 100, 64, 2, 16, 0.7),
        (2, 20, 25, 5, 3, 33, 16, 0.0),
        (2, 40, 50, 24, 100, 3, 3, 0.6),  # direct tiles over two value slabs (64 + 36)
        (1, 50, 60, 100, 130, 2, 2, 0.5),  # three slabs; tables too large for 48 KiB
    ]
    for bh, nq, nk, d, dv, m, tau, hot in cases:
        qc, kc, qm, km = random_codes_and_masks(gen, bh, nq, nk, m, tau, hot)
        if bh > 1:
            km[0] = False
        q, k = torch.randn(bh, nq, d, generator=gen), torch.randn(bh, nk, d, generator=gen)
        v, g = torch.randn(bh, nk, dv, generator=gen), torch.randn(bh, nq, dv, generator=gen)
        got = _emulated_backward(ops, qm, qc, q, km, kc, k, v, g, tau)
        want = ref.lsh_backward(qm, qc, q, km, kc, k, v, g, tau)
        bound = ref.lsh_backward(qm, qc, q.abs(), km, kc, k.abs(), v.abs(), g.abs(), tau)
        for name, a, b, c in zip(("dq", "dk", "dv"), got, want, bound):
            assert bool(((a - b).abs() <= 3e-5 * c + 1e-6).all()), f"backward {name} differs"
    return len(cases)


# Shared floats of bucket_backward_kernel before its last region (the S tile and the slabs),
# and the staged rows' count per tile (yoso_kernels.cu: kDirectSharedFloats, kTileQ + kTileK).
BACKWARD_BASE_FLOATS = 16 * 32 + (16 + 32) * 65
BACKWARD_TILE_ROWS = 16 + 32


def backward_smem(d: int, dv: int, tables: bool, stage: bool) -> int:
    """The bucket kernel's dynamic shared bytes for the given paths (choose_bucket_shared_plan)."""
    region = max(2 * dv * d if tables else 0, BACKWARD_TILE_ROWS * (d | 1) if stage else 0)
    return 4 * (BACKWARD_BASE_FLOATS + region)


def check_backward_paths(ops: EmulatedOps) -> int:
    """The backward's choices against the reference, and which ones ran.

    Shared memory: dQ and dK from K_K and Q_Q rows staged in shared memory (with and without the
    per-bucket tables T1, T2 beside them, with an opt-in above 48 KiB, several value slabs), and
    from global memory where the staged rows do not fit the device's opt-in limit.
    dV: from the per-bucket tables of G's sums (one hash chunk, or one chunk per hash when one
    hash's table takes most of the budget), and by atomics where one hash's table exceeds the
    budget (tau 16, dv 1100: 288 MB)."""
    import torch

    from src.kernels import reference as ref

    gen = torch.Generator().manual_seed(6)
    kib = 1024
    h100 = H100_SMEM_OPTIN
    # (device limit, bh, nq, nk, d, dv, m, tau, hot, tables, stage, hash chunks, dV tables)
    cases = [
        (h100, 2, 300, 280, 64, 64, 2, 3, 0.9, True, True, 1, True),  # tables and tiles mixed
        (h100, 2, 40, 50, 3, 100, 3, 3, 0.6, True, True, 1, True),  # odd d, two slabs
        (h100, 1, 60, 70, 1, 5, 2, 2, 0.5, True, True, 1, True),  # d 1
        (h100, 1, 50, 60, 200, 70, 2, 2, 0.5, False, True, 1, True),  # 52 KiB: opts in
        (48 * kib, 1, 50, 60, 200, 70, 2, 2, 0.5, False, False, 1, True),  # d 200 does not fit
        (48 * kib, 1, 50, 60, 179, 130, 2, 2, 0.5, False, True, 1, True),  # d 179 is the largest
        (16 * kib, 1, 50, 60, 100, 130, 2, 2, 0.5, False, False, 1, True),  # three slabs, global rows
        (h100, 1, 6, 8, 4, 600, 3, 16, 0.5, True, True, 3, True),  # 157 MB per hash: 3 chunks
        (h100, 1, 5, 7, 4, 1100, 2, 16, 0.5, False, True, 1, False),  # 288 MB: dV by atomics
    ]
    for limit, bh, nq, nk, d, dv, m, tau, hot, tables, stage, chunks, dv_tables in cases:
        qc, kc, qm, km = random_codes_and_masks(gen, bh, nq, nk, m, tau, hot)
        q, k = torch.randn(bh, nq, d, generator=gen), torch.randn(bh, nk, d, generator=gen)
        v, g = torch.randn(bh, nk, dv, generator=gen), torch.randn(bh, nq, dv, generator=gen)
        with device_smem_optin(ops.lib, limit):
            ops.lib.emu_clear_launches()
            got = _emulated_backward(ops, qm, qc, q, km, kc, k, v, g, tau)
        want = ref.lsh_backward(qm, qc, q, km, kc, k, v, g, tau)
        bound = ref.lsh_backward(qm, qc, q.abs(), km, kc, k.abs(), v.abs(), g.abs(), tau)
        where = f"limit {limit}, d {d}, dv {dv}"
        for name, a, b, c in zip(("dq", "dk", "dv"), got, want, bound):
            assert bool(((a - b).abs() <= 3e-5 * c + 1e-6).all()), f"backward {name} differs ({where})"
        log = launch_log(ops.lib)
        smem = [smem for name, _, smem, _ in log if name == "bucket_backward_kernel"]
        assert smem == [backward_smem(d, dv, tables, stage)] * chunks, (where, smem)
        gathers = [name for name, *_ in log if name == "dv_from_tables_kernel"]
        assert len(gathers) == (chunks if dv_tables else 0), (where, log)
        assert all(status == 0 for *_, status in log), where
        workspace = ops.lib.yoso_lsh_backward_workspace_bytes(bh, nq, nk, m, dv, tau)
        assert workspace <= (256 << 20) + 256, (where, workspace)
    return len(cases)


def check_emulate(asan: bool = False) -> None:
    """Every launcher against the reference (``asan``: on the AddressSanitizer build, which
    must then run in a process that preloads libasan, see ``run_under_sanitizer("asan")``)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from src.kernels import reference as ref
    from src.kernels.options import YOSOOptions

    if asan:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="yoso_emu_") as tmp:
        ops = EmulatedOps(build_emulation(Path(tmp), asan=asan))
        gen = torch.Generator().manual_seed(0)
        cases = [  # (bh, nq, nk, d, dv, m, tau)
            (1, 1, 1, 1, 1, 1, 1),
            (2, 31, 33, 24, 24, 3, 5),
            (3, 33, 31, 100, 7, 16, 8),
            (1, 257, 300, 64, 64, 5, 12),
            (2, 40, 50, 32, 3, 33, 16),
            (1, 5, 9, 3, 2, 2, 15),
        ]
        checked = 0
        for bh, nq, nk, d, dv, m, tau in cases:
            q = torch.nn.functional.normalize(torch.randn(bh, nq, d, generator=gen), dim=-1)
            k = torch.nn.functional.normalize(torch.randn(bh, nk, d, generator=gen), dim=-1)
            q[:, -1] = 0.0  # zero rows: every projection is 0, so every bit is 0
            v = torch.randn(bh, nk, dv, generator=gen)
            qm = torch.rand(bh, nq, generator=gen) > 0.2
            km = torch.rand(bh, nk, generator=gen) > 0.2
            if bh > 1:
                km[0] = False  # an all-padding head
            # Gaussian hash: the same GEMM as the reference, then the packing kernel, so
            # the codes are bit-identical (on a GPU both GEMMs are the same cuBLAS call).
            proj = torch.randn(bh, d, m * tau, generator=gen)
            got = ops.hash_gaussian(q, proj, tau)
            assert torch.equal(got, ref.hash_gaussian(q, proj, tau)), "gaussian codes differ"
            assert not bool(got[:, -1].any()), "zero vectors must hash to code 0"
            # Fast hash: bit-identical.
            options = YOSOOptions(hash_code_len=tau, num_hashes=m, hashing="fast")
            width, parts = options.fast_hash_width(d), options.fast_hash_parts(d)
            signs = torch.randint(0, 2, (bh, 3, parts, width), generator=gen).float() * 2 - 1
            qc = ops.hash_fast(q, signs, m, tau)
            assert torch.equal(qc, ref.hash_fast(q, signs, m, tau)), "fast codes differ"
            kc = ops.hash_fast(k, signs, m, tau)
            assert torch.equal(kc, ref.hash_fast(k, signs, m, tau)), "fast codes differ"
            # Cumulations with the same codes.
            got = ops.lsh_cumulation(qm, qc, km, kc, v, tau)
            want = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
            bound = ref.lsh_cumulation(qm, qc, km, kc, v.abs(), tau)
            assert bool(((got - want).abs() <= 1e-5 * bound + 1e-7).all()), "cumulation differs"
            checked += 1
        # Chunked paths: tables above the workspace budget (2**16 buckets x 1024
        # floats), split over columns (dv 1100), hashes (m 20 > 16 per chunk) and
        # heads (dv 400: 2 hashes and 1 head per chunk).
        for bh, nq, nk, dv, m, tau in [
            (2, 3, 5, 1100, 3, 16),
            (3, 7, 9, 64, 20, 16),
            (3, 6, 5, 400, 2, 16),
        ]:
            qc = torch.randint(0, 3, (bh, nq, m), generator=gen, dtype=torch.int32)
            kc = torch.randint(0, 3, (bh, nk, m), generator=gen, dtype=torch.int32)
            qm = torch.rand(bh, nq, generator=gen) > 0.2
            km = torch.rand(bh, nk, generator=gen) > 0.2
            v = torch.randn(bh, nk, dv, generator=gen)
            ws = ops.lib.yoso_lsh_cumulation_workspace_bytes(bh, m, dv, tau)
            assert ws <= 256 << 20, ws
            got = ops.lsh_cumulation(qm, qc, km, kc, v, tau)
            want = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            checked += 1
        checked += check_emulated_backward(ops)
        checked += check_backward_paths(ops)
        checked += check_shared_cumulation(ops)
        checked += check_sign_packing(ops)
        checked += check_large_shared_memory(ops)
        print(f"emulate: {checked} cases match the reference")


# The device's opt-in limit of dynamic shared memory per block that the emulator reports by default.
H100_SMEM_OPTIN = 227 * 1024


@contextlib.contextmanager
def device_smem_optin(lib: ctypes.CDLL, limit: int):
    """Within the block, the emulated device's opt-in limit of dynamic shared memory is ``limit``."""
    lib.emu_set_device_smem_optin(limit)
    try:
        yield
    finally:
        lib.emu_set_device_smem_optin(H100_SMEM_OPTIN)


def check_shared_cumulation(ops: EmulatedOps) -> int:
    """The forward cumulation's two paths against the reference, and the launcher's choice between
    them: shared-memory tables (several hashes per block, all hashes in one block, column slices)
    and the global tables where not even min(dv, 8) columns of one hash's table fit; also on
    devices with less shared memory than an H100."""
    import torch

    from src.kernels import reference as ref

    gen = torch.Generator().manual_seed(5)
    kib = 1024
    cases = [  # (device limit, bh, nq, nk, dv, m, tau, (blocks, shared bytes) or None: global tables)
        (H100_SMEM_OPTIN, 2, 37, 45, 64, 5, 8, (4, 3 * 256 * 64 * 4)),  # groups of 3 and 2 hashes
        (H100_SMEM_OPTIN, 2, 33, 40, 7, 16, 8, (2, 16 * 256 * 7 * 4)),  # one group: plain stores
        (H100_SMEM_OPTIN, 1, 70, 60, 64, 3, 12, (15, 4096 * 13 * 4)),  # 5 slices of <= 13 columns
        (H100_SMEM_OPTIN, 1, 9, 11, 3, 2, 14, (2, 16384 * 3 * 4)),  # dv 3 < 8: all 3 columns fit
        (H100_SMEM_OPTIN, 2, 20, 30, 16, 2, 13, None),  # 7 columns fit, fewer than 8
        (H100_SMEM_OPTIN, 1, 9, 11, 5, 2, 14, None),  # 3 of 5 columns fit
        (16 * kib, 2, 40, 50, 64, 6, 5, (6, 2 * 32 * 64 * 4)),  # 3 groups of 2 hashes
        (16 * kib, 2, 40, 50, 200, 3, 5, (12, 32 * 100 * 4)),  # 2 slices of 100 columns
        (512, 2, 40, 50, 20, 3, 5, None),  # 4 columns fit: global tables
    ]
    for limit, bh, nq, nk, dv, m, tau, expected in cases:
        # hot 0.4: full buckets, many keys per table row
        qc, kc, qm, km = random_codes_and_masks(gen, bh, nq, nk, m, tau, 0.4)
        if bh > 1:
            km[0] = False  # an all-padding head
        v = torch.randn(bh, nk, dv, generator=gen)
        with device_smem_optin(ops.lib, limit):
            workspace = ops.lib.yoso_lsh_cumulation_workspace_bytes(bh, m, dv, tau)
            ops.lib.emu_clear_launches()
            got = ops.lsh_cumulation(qm, qc, km, kc, v, tau)
        want = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
        bound = ref.lsh_cumulation(qm, qc, km, kc, v.abs(), tau)
        where = f"limit {limit}, bh {bh}, dv {dv}, m {m}, tau {tau}"
        assert bool(((got - want).abs() <= 1e-5 * bound + 1e-7).all()), f"cumulation differs ({where})"
        log = launch_log(ops.lib)
        if expected is None:
            assert workspace > 0, where
            assert {name for name, *_ in log} == {"scatter_kernel", "gather_kernel"}, (where, log)
        else:
            assert workspace == 0, where
            assert log == [("shared_cumulation_kernel", *expected, 0)], (where, log)
    return len(cases)


def check_sign_packing(ops: EmulatedOps) -> int:
    """The packing kernel against the reference's packing on projections with every
    special value (0, -0, NaN, +-inf, subnormals, values next to 0), all code lengths and
    counts that leave partial tiles: bit-identical."""
    import torch

    from src.kernels import reference as ref

    gen = torch.Generator().manual_seed(2)
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45, -1e-45,
                             1.2e-38, -1.2e-38, 1e-7, -1e-7, 1.0, -1.0])
    cases = 0
    for tau in range(1, 17):
        for rows, m in ((1, 1), (7, 3), (300, 5) if tau % 5 == 0 else (33, 2)):
            projected = torch.randn(rows, m * tau, generator=gen)
            pick = torch.rand(projected.shape, generator=gen) < 0.5
            index = torch.randint(0, len(specials), projected.shape, generator=gen)
            projected = torch.where(pick, specials[index], projected)
            got = ops.pack_sign_bits(projected, tau)
            want = ref._bits_to_codes(projected, m, tau)
            assert torch.equal(got, want), f"packed codes differ (tau {tau}, rows {rows}, m {m})"
            cases += 1
    return cases


def check_large_shared_memory(ops: EmulatedOps) -> int:
    """A fast hash of width 16384 needs 64 KiB of shared memory per block: its launcher opts
    in (cudaFuncSetAttribute) and the emulator, which allows 48 KiB without, runs it."""
    import torch

    from src.kernels import reference as ref

    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(1, 2, 16384, generator=gen), dim=-1)
    signs = torch.randint(0, 2, (1, 3, 1, 16384), generator=gen).float() * 2 - 1
    ops.lib.emu_clear_launches()
    codes = ops.hash_fast(x, signs, 3, 8)
    assert torch.equal(codes, ref.hash_fast(x, signs, 3, 8)), "fast codes differ (width 16384)"
    [(name, _, smem, status)] = launch_log(ops.lib)
    assert name == "hash_fast_kernel" and smem == 16384 * 4 and status == 0
    return 1


def check_small_grid() -> None:
    """Every grid capped at SMALL_GRID_BLOCKS blocks: the sizes below give each kernel more
    than SMALL_GRID_BLOCKS blocks' worth of work, so every grid-stride loop runs several
    rounds, and the results still match the reference."""
    sys.path.insert(0, str(ROOT))
    import torch

    from src.kernels import reference as ref

    with tempfile.TemporaryDirectory(prefix="yoso_emu_grid_") as tmp:
        ops = EmulatedOps(build_emulation(Path(tmp), max_blocks=SMALL_GRID_BLOCKS))
        gen = torch.Generator().manual_seed(4)
        # 600 code rows x 3 hashes > 2 x 256; 4 x 700 fast-hash vectors > 2 tiles of 64;
        # bh x hashes x n > 512 for counting and placing; > 2 (head, hash) units; 3 heads > 2
        # blocks of shared-memory tables.
        bh, nq, nk, d, dv, m, tau = 3, 200, 240, 32, 20, 3, 5
        q = torch.nn.functional.normalize(torch.randn(bh, nq, d, generator=gen), dim=-1)
        k = torch.nn.functional.normalize(torch.randn(bh, nk, d, generator=gen), dim=-1)
        v, g = torch.randn(bh, nk, dv, generator=gen), torch.randn(bh, nq, dv, generator=gen)
        qm, km = torch.rand(bh, nq, generator=gen) > 0.2, torch.rand(bh, nk, generator=gen) > 0.2
        ops.lib.emu_clear_launches()
        proj = torch.randn(bh, d, m * tau, generator=gen)
        assert torch.equal(ops.hash_gaussian(q, proj, tau), ref.hash_gaussian(q, proj, tau))
        signs = torch.randint(0, 2, (bh, 3, 1, d), generator=gen).float() * 2 - 1
        qc, kc = ops.hash_fast(q, signs, m, tau), ops.hash_fast(k, signs, m, tau)
        assert torch.equal(qc, ref.hash_fast(q, signs, m, tau))
        assert torch.equal(kc, ref.hash_fast(k, signs, m, tau))
        want = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
        got = ops.lsh_cumulation(qm, qc, km, kc, v, tau)  # shared-memory tables
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        with device_smem_optin(ops.lib, 512):  # 4 columns of a table fit: the global tables
            got = ops.lsh_cumulation(qm, qc, km, kc, v, tau)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        got = _emulated_backward(ops, qm, qc, q, km, kc, k, v, g, tau)
        want = ref.lsh_backward(qm, qc, q, km, kc, k, v, g, tau)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        log = launch_log(ops.lib)
        kernels = set(re.findall(r"__global__ void (\w+)\(", (CUDA_DIR / "yoso_kernels.cu").read_text()))
        assert {name for name, *_ in log} == kernels, "every kernel runs in the small-grid check"
        assert all(grid == SMALL_GRID_BLOCKS and status == 0 for _, grid, _, status in log), log
        print(f"small grid: {len(log)} launches, every grid capped at {SMALL_GRID_BLOCKS} blocks, "
              "results match the reference")



# Source edits that must make the TSan emulation fail (see test_cuda_emulation.py): an
# (old, new) pair, or a list of pairs applied in turn; each old text must occur exactly once.
MUTATIONS = {
    "atomic": (
        "atomicAdd(&dq[Q[a0 + a] * d + col], alpha * acc);",
        "dq[Q[a0 + a] * d + col] += alpha * acc;",
    ),
    "barrier": ("          __syncthreads();  // the S tile and the staged rows are complete\n",
                "          // (barrier removed)\n"),
    # The backward tile's K_K and Q_Q rows staged after the barrier that should follow them: dQ
    # and dK read rows still being written.
    # (Two edits: the barrier moves from after the staging to before it, so S stays complete.)
    "stage_barrier": [
        ("          if (stage) {\n"
         "            // The tile's K_K and Q_Q rows, each loaded by consecutive lanes (coalesced).\n",
         "          __syncthreads();\n"
         "          if (stage) {\n"
         "            // The tile's K_K and Q_Q rows, each loaded by consecutive lanes (coalesced).\n"),
        ("          __syncthreads();  // the S tile and the staged rows are complete\n", ""),
    ],
    # No barrier between the S tiles' slabs: the next slab overwrites rows still being read.
    "slab_barrier": ("            __syncthreads();  // the slabs are overwritten next\n",
                     "            // (barrier removed)\n"),
    # No barrier between the shared-memory tables' scatter and the queries' reads of them.
    "table_barrier": ("    __syncthreads();  // the tables are complete before any query reads them\n",
                      "    // (barrier removed)\n"),
    # The fast hash no longer opts in to its 64 KiB of shared memory: its launch must fail.
    "optin": (
        "err = cudaFuncSetAttribute(hash_fast_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,\n"
        "                               static_cast<int>(smem));",
        "err = cudaSuccess;",
    ),
    # The packing kernel ignores the partial last tile: reads and writes past the tensors,
    # which the AddressSanitizer build must report.
    "overflow": (
        "const int64_t count = clamp64(total - first, 0, per_tile);",
        "const int64_t count = per_tile;",
    ),
}


def mutated_source(mutation: str | None) -> str:
    source = (CUDA_DIR / "yoso_kernels.cu").read_text()
    if mutation is None:
        return source
    edits = MUTATIONS[mutation]
    for old, new in [edits] if isinstance(edits, tuple) else edits:
        if source.count(old) != 1:
            raise SystemExit(f"mutation {mutation!r}: its target is not exactly once in the source")
        source = source.replace(old, new)
    return source


def race_case() -> None:
    """Small inputs for every launcher; hot buckets so that two hashes of one head share rows."""
    sys.path.insert(0, str(ROOT))
    import torch

    from src.kernels import reference as ref

    torch.set_num_threads(1)  # torch's OpenMP is not instrumented: keep it out of TSan's view
    gen = torch.Generator().manual_seed(0)
    bh, nq, nk, d, dv, m, tau = 1, 40, 30, 32, 70, 2, 2  # dv 70: two slabs of the S tiles
    qc = torch.randint(0, 2**tau, (bh, nq, m), generator=gen, dtype=torch.int32)
    kc = torch.randint(0, 2**tau, (bh, nk, m), generator=gen, dtype=torch.int32)
    qc[:, : nq // 2] = 0
    kc[:, : nk // 2] = 0
    qm, km = torch.ones(bh, nq, dtype=torch.bool), torch.ones(bh, nk, dtype=torch.bool)
    q, k = torch.randn(bh, nq, d, generator=gen), torch.randn(bh, nk, d, generator=gen)
    v, g = torch.randn(bh, nk, dv, generator=gen), torch.randn(bh, nq, dv, generator=gen)
    return qm, qc, q, km, kc, k, v, g, tau, ref


def run_case(lib: ctypes.CDLL) -> None:
    """Every launcher once on the race case, the cumulation on each of its paths (shared tables
    in one block, in one block per hash, global tables), the backward with and without staged
    K_K and Q_Q rows; results checked loosely: races are the point."""
    import torch

    ops = EmulatedOps(lib)
    qm, qc, q, km, kc, k, v, g, tau, ref = race_case()
    x = torch.nn.functional.normalize(q, dim=-1)
    ops.hash_gaussian(x, torch.randn(1, 32, 2 * tau), tau)
    ops.hash_fast(x, torch.ones(1, 3, 1, 32), 2, tau)
    want = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
    outs = [ops.lsh_cumulation(qm, qc, km, kc, v, tau)]  # shared-memory tables, one block
    # 100 columns of a table fit: a block per hash, both add into the output at once.
    with device_smem_optin(lib, 100 * 4 << tau):
        outs.append(ops.lsh_cumulation(qm, qc, km, kc, v, tau))
    with device_smem_optin(lib, 16):  # nothing fits: the global tables
        outs.append(ops.lsh_cumulation(qm, qc, km, kc, v, tau))
    for out in outs:
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    want = ref.lsh_backward(qm, qc, q, km, kc, k, v, g, tau)
    got = [_emulated_backward(ops, qm, qc, q, km, kc, k, v, g, tau)]  # staged K_K and Q_Q rows
    with device_smem_optin(lib, 16 * 1024):  # the staged rows do not fit: global reads
        got.append(_emulated_backward(ops, qm, qc, q, km, kc, k, v, g, tau))
    for outs in got:
        for a, b in zip(outs, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _sanitizer_runtime(name: str) -> str:
    """Path of gcc's lib<name>.so (for LD_PRELOAD); "" when gcc does not have it."""
    found = subprocess.run(["gcc", f"-print-file-name=lib{name}.so"], capture_output=True, text=True)
    path = found.stdout.strip()
    return path if found.returncode == 0 and os.path.isabs(path) else ""


def has_sanitizer(name: str) -> bool:
    return bool(_sanitizer_runtime(name))


SANITIZER_OPTIONS = {
    "tsan": ("TSAN_OPTIONS", f"halt_on_error=1 exitcode={TSAN_EXIT_CODE} report_signal_unsafe=0"),
    "asan": ("ASAN_OPTIONS", f"detect_leaks=0:halt_on_error=1:exitcode={ASAN_EXIT_CODE}"),
}


def run_under_sanitizer(name: str, mutation: str | None = None,
                        timeout: float = 600) -> subprocess.CompletedProcess:
    """Build the ``name`` (``tsan`` or ``asan``) emulation, optionally of a mutated source, and run
    it in a child process with the sanitizer's runtime preloaded (it must come first).

    ``tsan`` runs the race case (exit TSAN_EXIT_CODE on a data race); ``asan`` runs every check of
    ``check_emulate`` (exit ASAN_EXIT_CODE on an out-of-bounds access), or with a mutation the race
    case only (every launcher once), which is where the mutation's out-of-bounds access happens."""
    options_var, options = SANITIZER_OPTIONS[name]
    env = dict(os.environ, LD_PRELOAD=_sanitizer_runtime(name), OMP_NUM_THREADS="1",
               **{options_var: options})
    cmd = [sys.executable, "-m", "tests.kernels.cuda_emulator", f"--{name}"]
    if mutation:
        cmd += ["--mutate", mutation]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check_asan() -> None:
    """``check_emulate`` on the AddressSanitizer build (a child process); raises on a report."""
    done = run_under_sanitizer("asan")
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(f"asan: the emulated kernels under AddressSanitizer failed (exit {done.returncode})")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="run the emulated kernels (see module docstring)")
    parser.add_argument("--tsan", action="store_true", help="ThreadSanitizer build, race case only")
    parser.add_argument("--asan", action="store_true", help="AddressSanitizer build (run it "
                        "through run_under_sanitizer('asan'): libasan must be preloaded)")
    parser.add_argument("--mutate", choices=sorted(MUTATIONS), default=None)
    args = parser.parse_args()
    if args.asan:
        if args.mutate:
            with tempfile.TemporaryDirectory(prefix="yoso_asan_") as tmp:
                run_case(build_emulation(Path(tmp), mutated_source(args.mutate), asan=True))
        else:
            check_emulate(asan=True)
        print("asan: no out-of-bounds access reported")
        return
    if not args.tsan:
        check_emulate()
        return
    with tempfile.TemporaryDirectory(prefix="yoso_tsan_") as tmp:
        run_case(build_emulation(Path(tmp), mutated_source(args.mutate), tsan=True))
    print("race case: no data race reported")


if __name__ == "__main__":
    main()
