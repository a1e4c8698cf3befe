"""CPU emulation of the CUDA kernels (``src/kernels/csrc/cuda/yoso_kernels.cu``).

Why: most machines that run the tests have no GPU. The ``.cu`` file is
translated to C++ (``kernel<<<grid, block, smem, stream>>>(...)`` becomes a call
to a small emulator of the CUDA runtime), compiled with g++ and called through
ctypes, so the kernels' own index arithmetic, tails, chunking, sorting and
masks are checked against ``reference.py`` without a GPU. The plain build runs
blocks one after the other (threads of a synchronising kernel as real threads
around a barrier): fast, for results. The ThreadSanitizer build (``tsan=True``,
run under ``LD_PRELOAD`` of libtsan, see ``run_under_tsan``) runs every thread
of several far-apart blocks at once, so a missing atomic or barrier is a data
race that TSan reports.

Used by tests/kernels/test_cuda_emulation.py and ``scripts/check_cuda_build.py emulate``.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "src" / "kernels" / "csrc" / "cuda"
LAUNCHERS = (
    "yoso_hash_gaussian",
    "yoso_hash_fast",
    "yoso_lsh_cumulation",
    "yoso_lsh_cumulation_workspace_bytes",
    "yoso_lsh_backward",
    "yoso_lsh_backward_workspace_bytes",
)
TSAN_EXIT_CODE = 66


EMU_HEADER = r"""
// Minimal host emulation of the CUDA runtime features yoso_kernels.cu uses.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
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
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local float* shared_mem = nullptr;
inline cudaError_t last_error = cudaSuccess;
inline size_t smem_limit = 48 * 1024;
}  // namespace emu
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
  *v = 227 * 1024;
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int bytes) {
  emu::smem_limit = static_cast<size_t>(bytes);
  return cudaSuccess;
}
namespace emu {
#ifdef YOSO_EMU_CONCURRENT
constexpr unsigned kBlocksPerWave = 4;
// Runs the grid in waves of kBlocksPerWave blocks; every thread of a wave is a
// real thread, each block with its own barrier and shared memory, and a wave
// takes blocks far apart in the grid (i, i + waves, ...), which is where
// conflicting global writes come from (e.g. two hashes of one head). So a
// plain `+=` where an atomicAdd is needed, or a missing __syncthreads, is a
// real data race here: ThreadSanitizer builds (tsan=True) report it.
template <bool kSync, class F>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, F kernel) {
  if (grid.x < 1 || block.x < 1 || block.x > 1024 || smem > smem_limit) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  grid_dim = grid;
  block_dim = block;
  const unsigned waves = (grid.x + kBlocksPerWave - 1) / kBlocksPerWave;
  for (unsigned w = 0; w < waves; ++w) {
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    std::vector<std::vector<float>> shared;
    std::vector<std::thread> threads;
    for (unsigned b = w; b < grid.x; b += waves) {
      barriers.push_back(std::make_unique<std::barrier<>>(block.x));
      shared.emplace_back(smem / sizeof(float) + 1);
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
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, F kernel) {
  if (grid.x < 1 || block.x < 1 || block.x > 1024 || smem > smem_limit) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  grid_dim = grid;
  block_dim = block;
  std::vector<float> shared(smem / sizeof(float) + 1);
  for (unsigned b = 0; b < grid.x; ++b) {
    if (kSync) {
      std::barrier<> bar(block.x);
      std::vector<std::thread> threads;
      for (unsigned t = 0; t < block.x; ++t) {
        threads.emplace_back([&, b, t] {
          block_idx = dim3(b);
          thread_idx = dim3(t);
          block_barrier = &bar;
          shared_mem = shared.data();
          kernel();
        });
      }
      for (auto& th : threads) th.join();
    } else {
      for (unsigned t = 0; t < block.x; ++t) {
        block_idx = dim3(b);
        thread_idx = dim3(t);
        shared_mem = shared.data();
        kernel();
      }
    }
  }
}
#endif  // YOSO_EMU_CONCURRENT
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
        return f"emu::launch<{sync}>({', '.join(config_parts)}, [&]() {{ {name}({args}); }});"

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


def build_emulation(tmp: Path, source: str | None = None, tsan: bool = False) -> ctypes.CDLL:
    """Translate, compile and load the kernels (``source``: the .cu text, default the real file)."""
    emu_include = tmp / "include"
    emu_include.mkdir()
    (emu_include / "cuda_runtime_api.h").write_text(EMU_HEADER)
    (emu_include / "cuda_runtime.h").write_text('#include "cuda_runtime_api.h"\n')
    translated = tmp / "yoso_kernels_emu.cpp"
    translated.write_text(translate_cu(source or (CUDA_DIR / "yoso_kernels.cu").read_text()))
    library = tmp / "libyoso_emu.so"
    cmd = [
        os.environ.get("CXX", "g++"),
        "-std=c++20",
        *(["-O1", "-g", "-fsanitize=thread", "-DYOSO_EMU_CONCURRENT"] if tsan else ["-O2"]),
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
    lib.yoso_hash_gaussian.argtypes = [p, p, p, i64, i64, i64, i64, i32, p]
    lib.yoso_hash_fast.argtypes = [p, p, p, i64, i64, i64, i64, i64, i64, i32, p]
    lib.yoso_lsh_cumulation_workspace_bytes.argtypes = [i64, i64, i64, i32]
    lib.yoso_lsh_cumulation_workspace_bytes.restype = ctypes.c_size_t
    lib.yoso_lsh_cumulation.argtypes = [p, p, p, p, p, p, p] + [i64] * 5 + [i32, p]
    lib.yoso_lsh_backward_workspace_bytes.argtypes = [i64, i64, i64, i64, i32]
    lib.yoso_lsh_backward_workspace_bytes.restype = ctypes.c_size_t
    lib.yoso_lsh_backward.argtypes = [p] * 12 + [i64] * 6 + [i32, p]
    for name in LAUNCHERS:
        if not name.endswith("_workspace_bytes"):
            getattr(lib, name).restype = ctypes.c_int
    return lib


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

    def hash_gaussian(self, x, projection, tau):
        import torch

        x, projection = x.float().contiguous(), projection.float().contiguous()
        bh, n, d = x.shape
        codes = torch.empty(bh, n, projection.shape[-1] // tau, dtype=torch.int32)
        self._check(
            self.lib.yoso_hash_gaussian(
                self._ptr(x),
                self._ptr(projection),
                self._ptr(codes),
                bh,
                n,
                d,
                projection.shape[-1],
                tau,
                None,
            ),
            "hash_gaussian",
        )
        return codes

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
        import torch

        size = self.lib.yoso_lsh_cumulation_workspace_bytes(bh, m, dv, tau)
        return torch.empty(max(1, size // 4), dtype=torch.float32)

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
                self._ptr(ws),
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
    size = ops.lib.yoso_lsh_backward_workspace_bytes(bh, nq, nk, m, tau)
    ws = torch.empty(max(1, size // 4), dtype=torch.int32)
    status = ops.lib.yoso_lsh_backward(
        *(ops._ptr(t) for t in (qm, qc, q, km, kc, k, v, g, *outs, ws)), bh, nq, nk, m, d, dv, tau, None
    )
    ops._check(status, "lsh_backward")
    return outs


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
    ]
    for bh, nq, nk, d, dv, m, tau, hot in cases:
        qc = torch.randint(0, 2**tau, (bh, nq, m), generator=gen, dtype=torch.int32)
        kc = torch.randint(0, 2**tau, (bh, nk, m), generator=gen, dtype=torch.int32)
        qc[torch.rand(qc.shape, generator=gen) < hot] = 1
        kc[torch.rand(kc.shape, generator=gen) < hot] = 1
        qm = torch.rand(bh, nq, generator=gen) > 0.2
        km = torch.rand(bh, nk, generator=gen) > 0.2
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


def check_emulate() -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from src.kernels import reference as ref
    from src.kernels.options import YOSOOptions

    with tempfile.TemporaryDirectory(prefix="yoso_emu_") as tmp:
        ops = EmulatedOps(build_emulation(Path(tmp)))
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
            # Gaussian hash: bits may differ only where the projection is ~0.
            proj = torch.randn(bh, d, m * tau, generator=gen)
            got, want = ops.hash_gaussian(q, proj, tau), ref.hash_gaussian(q, proj, tau)
            projected = torch.bmm(q.double(), proj.double()).reshape(bh, nq, m, tau)
            bits = ((got ^ want).unsqueeze(-1) >> torch.arange(tau)) & 1
            assert bool((projected.abs()[bits.bool()] < 1e-5).all()), "gaussian codes differ"
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
        print(f"emulate: {checked} cases match the reference")



# Source edits that must make the TSan emulation fail (see test_cuda_emulation.py).
MUTATIONS = {
    "atomic": (
        "atomicAdd(&dq[Q[a0 + a] * d + col], alpha * acc);",
        "dq[Q[a0 + a] * d + col] += alpha * acc;",
    ),
    "barrier": ("            s[e] = dot;\n          }\n          __syncthreads();",
                "            s[e] = dot;\n          }"),
}


def mutated_source(mutation: str | None) -> str:
    source = (CUDA_DIR / "yoso_kernels.cu").read_text()
    if mutation is None:
        return source
    old, new = MUTATIONS[mutation]
    if source.count(old) != 1:
        raise SystemExit(f"mutation {mutation!r}: its target is not exactly once in the source")
    return source.replace(old, new)


def race_case() -> None:
    """Small inputs for every launcher; hot buckets so that two hashes of one head share rows."""
    sys.path.insert(0, str(ROOT))
    import torch

    from src.kernels import reference as ref

    torch.set_num_threads(1)  # torch's OpenMP is not instrumented: keep it out of TSan's view
    gen = torch.Generator().manual_seed(0)
    bh, nq, nk, d, dv, m, tau = 1, 40, 30, 32, 32, 2, 2
    qc = torch.randint(0, 2**tau, (bh, nq, m), generator=gen, dtype=torch.int32)
    kc = torch.randint(0, 2**tau, (bh, nk, m), generator=gen, dtype=torch.int32)
    qc[:, : nq // 2] = 0
    kc[:, : nk // 2] = 0
    qm, km = torch.ones(bh, nq, dtype=torch.bool), torch.ones(bh, nk, dtype=torch.bool)
    q, k = torch.randn(bh, nq, d, generator=gen), torch.randn(bh, nk, d, generator=gen)
    v, g = torch.randn(bh, nk, dv, generator=gen), torch.randn(bh, nq, dv, generator=gen)
    return qm, qc, q, km, kc, k, v, g, tau, ref


def run_case(lib: ctypes.CDLL) -> None:
    """Every launcher once on the race case (results checked loosely: races are the point)."""
    import torch

    ops = EmulatedOps(lib)
    qm, qc, q, km, kc, k, v, g, tau, ref = race_case()
    x = torch.nn.functional.normalize(q, dim=-1)
    ops.hash_gaussian(x, torch.randn(1, 32, 2 * tau), tau)
    ops.hash_fast(x, torch.ones(1, 3, 1, 32), 2, tau)
    ops.lsh_cumulation(qm, qc, km, kc, v, tau)
    got = _emulated_backward(ops, qm, qc, q, km, kc, k, v, g, tau)
    want = ref.lsh_backward(qm, qc, q, km, kc, k, v, g, tau)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def run_under_tsan(mutation: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Build the ThreadSanitizer emulation (optionally of a mutated source) and run the race
    case in a child process with libtsan preloaded; exit code TSAN_EXIT_CODE on a data race."""
    libtsan = subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout
    env = dict(os.environ, LD_PRELOAD=libtsan.strip(), OMP_NUM_THREADS="1",
               TSAN_OPTIONS=f"halt_on_error=1 exitcode={TSAN_EXIT_CODE} report_signal_unsafe=0")
    cmd = [sys.executable, "-m", "tests.kernels.cuda_emulator", "--tsan"]
    if mutation:
        cmd += ["--mutate", mutation]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="run the emulated kernels (see module docstring)")
    parser.add_argument("--tsan", action="store_true", help="ThreadSanitizer build, race case only")
    parser.add_argument("--mutate", choices=sorted(MUTATIONS), default=None)
    args = parser.parse_args()
    if not args.tsan:
        check_emulate()
        return
    with tempfile.TemporaryDirectory(prefix="yoso_tsan_") as tmp:
        run_case(build_emulation(Path(tmp), mutated_source(args.mutate), tsan=True))
    print("race case: no data race reported")


if __name__ == "__main__":
    main()
