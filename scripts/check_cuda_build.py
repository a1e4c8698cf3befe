"""Check the CUDA backend on a machine without a GPU.

Modes (several may be given; each is timed):

``nvcc-only``
    Compile every ``src/kernels/csrc/cuda/*.cu`` with plain ``nvcc -c`` for
    sm_80 and sm_90 with warnings as errors. Needs only the CUDA toolkit.

``link``
    Build and link the full torch extension (binding + kernels) with
    ``src.kernels.build.load_extension(..., cuda=True)``, exactly as
    ``build.extension("cuda")`` does on a GPU machine, for TORCH_CUDA_ARCH_LIST
    "8.0;9.0". Needs a CUDA build of torch (e.g. torch==2.14.1 cu130) and nvcc.
    The built module is then imported: importing does not need a GPU (the
    driver's libcuda is only opened on the first CUDA call), so the check also
    proves that every symbol resolves. Should the import still fail because the
    driver library is missing, the check falls back to inspecting the built
    ``.so`` (``nm -D`` must list the four ``yoso_*`` launchers and the pybind
    module init) and says so.

``emulate``
    Run the kernels' own source on the CPU against ``reference.py``: the
    ``.cu`` file is translated to C++ (``kernel<<<...>>>(...)`` becomes a call
    to a small emulator that runs every block and thread, with a real barrier
    for ``__syncthreads``), compiled with g++ and called through ctypes. This
    checks the index arithmetic, tails, chunking and masks of the kernels
    without a GPU; only the binding is not exercised. Needs g++ (C++20).

Examples (from the repository root)::

    python scripts/check_cuda_build.py nvcc-only
    /tmp/cuda-venv/bin/python scripts/check_cuda_build.py link
    python scripts/check_cuda_build.py emulate
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "src" / "kernels" / "csrc" / "cuda"
ARCHES = ("80", "90")
EXTENSION_GLOB = "yoso_cuda_kernels*"
LAUNCHERS = (
    "yoso_hash_gaussian",
    "yoso_hash_fast",
    "yoso_lsh_cumulation",
    "yoso_lsh_weighted_cumulation",
    "yoso_lsh_cumulation_workspace_bytes",
    "yoso_lsh_backward",
    "yoso_lsh_backward_workspace_bytes",
)


def find_nvcc() -> str:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(cuda_home) / "bin" / "nvcc"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nvcc")
    if found is None:
        raise SystemExit("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    return found


# --------------------------------------------------------------------------- nvcc-only
def check_nvcc_only() -> None:
    nvcc = find_nvcc()
    sources = sorted(CUDA_DIR.glob("*.cu"))
    if not sources:
        raise SystemExit(f"no .cu files under {CUDA_DIR}")
    with tempfile.TemporaryDirectory(prefix="yoso_nvcc_") as tmp:
        for source in sources:
            for arch in ARCHES:
                obj = Path(tmp) / f"{source.stem}_sm{arch}.o"
                cmd = [
                    nvcc,
                    "-c",
                    str(source),
                    "-o",
                    str(obj),
                    "-O3",
                    "-std=c++17",
                    f"-gencode=arch=compute_{arch},code=sm_{arch}",
                    "-Werror",
                    "all-warnings",
                    "-Xcompiler",
                    "-Wall,-Wextra,-Werror",
                ]
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
                symbols = subprocess.run(
                    ["nm", str(obj)], check=True, capture_output=True, text=True
                ).stdout
                missing = [name for name in LAUNCHERS if f" T {name}\n" not in symbols]
                if missing:
                    raise SystemExit(f"{obj.name}: launchers not exported: {missing}")
    print(
        f"nvcc-only: {len(sources)} file(s) x sm_{', sm_'.join(ARCHES)} compiled, "
        "launchers exported"
    )


# --------------------------------------------------------------------------- link
def check_link(verbose: bool) -> None:
    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ.get("YOSO_CHECK_ARCH_LIST", "8.0;9.0")
    # A fresh build directory, so that the check really compiles and links
    # (set YOSO_BUILD_DIR to reuse a cache instead).
    scratch = None
    if not os.environ.get("YOSO_BUILD_DIR"):
        scratch = tempfile.TemporaryDirectory(prefix="yoso_link_")
        os.environ["YOSO_BUILD_DIR"] = scratch.name
    try:
        _build_and_load(verbose)
    finally:
        if scratch is not None:
            scratch.cleanup()


def _build_and_load(verbose: bool) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from src.kernels import build

    print(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"GPU available: {torch.cuda.is_available()}, "
        f"CUDA_HOME={os.environ['CUDA_HOME']}, arch list {os.environ['TORCH_CUDA_ARCH_LIST']}, "
        f"build dir {build.build_root()}"
    )
    if torch.version.cuda is None:
        raise SystemExit("link mode needs a CUDA build of torch (e.g. torch==2.14.1 cu130)")
    print("wheel include dirs:", [str(p) for p in build.wheel_cuda_include_dirs()])
    try:
        module = build.build_cuda(verbose=verbose)
    except (ImportError, RuntimeError) as error:
        # RuntimeError: build.py wraps compiler/linker failures; ImportError: built
        # and linked, but the loader could not open the result.
        text = f"{type(error).__name__}: {error}"
        if "libcuda" not in text:
            raise SystemExit(f"link mode failed: {text}") from error
        print(f"import of the built extension failed: {text}")
        _inspect_built_library(build.build_root())
        return
    names = ("hash_gaussian", "hash_fast", "lsh_cumulation", "lsh_weighted_cumulation")
    missing = [name for name in names if not callable(getattr(module, name, None))]
    if missing:
        raise SystemExit(f"built module {module.__file__} lacks {missing}")
    print(f"link: built and imported {module.__file__}")
    _check_symbols(Path(module.__file__))


def _inspect_built_library(root: Path) -> None:
    candidates = sorted(
        root.rglob(f"{EXTENSION_GLOB}.so"),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise SystemExit(f"no built {EXTENSION_GLOB}.so under {root}: the build or link failed")
    print(
        "no NVIDIA driver (libcuda.so) here, so the module cannot be imported; "
        "accepting the link from the built library's symbols instead"
    )
    _check_symbols(candidates[-1])


def _check_symbols(library: Path) -> None:
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], check=True, capture_output=True, text=True
    ).stdout
    missing = [name for name in (*LAUNCHERS, "PyInit_") if name not in symbols]
    if missing:
        raise SystemExit(f"{library}: missing symbols {missing}")
    print(f"{library.name}: launchers and PyInit present")
    # Libraries that stay unresolved outside a torch process: torch's own (loaded
    # by `import torch`) and the driver. Anything else means a broken link.
    ldd = subprocess.run(["ldd", str(library)], check=False, capture_output=True, text=True)
    expected = ("libc10", "libtorch", "libcuda.so")
    unresolved = [
        line.strip()
        for line in ldd.stdout.splitlines()
        if "not found" in line and not line.strip().startswith(expected)
    ]
    if unresolved:
        raise SystemExit(f"{library.name}: unresolved libraries: {unresolved}")


# --------------------------------------------------------------------------- emulate
EMU_HEADER = r"""
// Minimal host emulation of the CUDA runtime features yoso_kernels.cu uses.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
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


def build_emulation(tmp: Path) -> ctypes.CDLL:
    emu_include = tmp / "include"
    emu_include.mkdir()
    (emu_include / "cuda_runtime_api.h").write_text(EMU_HEADER)
    (emu_include / "cuda_runtime.h").write_text('#include "cuda_runtime_api.h"\n')
    translated = tmp / "yoso_kernels_emu.cpp"
    translated.write_text(translate_cu((CUDA_DIR / "yoso_kernels.cu").read_text()))
    library = tmp / "libyoso_emu.so"
    cmd = [
        os.environ.get("CXX", "g++"),
        "-std=c++20",
        "-O2",
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
    lib.yoso_lsh_cumulation_workspace_bytes.argtypes = [i64, i64, i64, i64, i32]
    lib.yoso_lsh_cumulation_workspace_bytes.restype = ctypes.c_size_t
    lib.yoso_lsh_cumulation.argtypes = [p, p, p, p, p, p, p] + [i64] * 5 + [i32, p]
    lib.yoso_lsh_weighted_cumulation.argtypes = [p] * 9 + [i64] * 6 + [i32, p]
    lib.yoso_lsh_backward_workspace_bytes.argtypes = [i64, i64, i64, i64, i32]
    lib.yoso_lsh_backward_workspace_bytes.restype = ctypes.c_size_t
    lib.yoso_lsh_backward.argtypes = [p] * 12 + [i64] * 6 + [i32, p]
    for name in LAUNCHERS:
        if not name.endswith("_workspace_bytes"):
            getattr(lib, name).restype = ctypes.c_int
    return lib


class EmulatedOps:
    """The four ops on CPU tensors through the emulated launchers."""

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

    def _workspace(self, bh, m, w, dv, tau):
        import torch

        size = self.lib.yoso_lsh_cumulation_workspace_bytes(bh, m, w, dv, tau)
        return torch.empty(max(1, size // 4), dtype=torch.float32)

    def lsh_cumulation(self, qm, qc, km, kc, value, tau):
        import torch

        qm, km = qm.bool().contiguous(), km.bool().contiguous()
        qc, kc = qc.int().contiguous(), kc.int().contiguous()
        value = value.float().contiguous()
        bh, nk, dv = value.shape
        nq, m = qc.shape[1], qc.shape[2]
        out = torch.full((bh, nq, dv), float("nan"))
        ws = self._workspace(bh, m, 1, dv, tau)
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

    def lsh_weighted_cumulation(self, qm, qc, qw, km, kc, kw, value, tau):
        import torch

        qm, km = qm.bool().contiguous(), km.bool().contiguous()
        qc, kc = qc.int().contiguous(), kc.int().contiguous()
        qw, kw, value = (t.float().contiguous() for t in (qw, kw, value))
        bh, nk, dv = value.shape
        nq, m, w = qc.shape[1], qc.shape[2], kw.shape[2]
        out = torch.full((bh, nq, dv), float("nan"))
        ws = self._workspace(bh, m, w, dv, tau)
        self._check(
            self.lib.yoso_lsh_weighted_cumulation(
                self._ptr(qm),
                self._ptr(qc),
                self._ptr(qw),
                self._ptr(km),
                self._ptr(kc),
                self._ptr(kw),
                self._ptr(value),
                self._ptr(out),
                self._ptr(ws),
                bh,
                nq,
                nk,
                m,
                w,
                dv,
                tau,
                None,
            ),
            "lsh_weighted_cumulation",
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
            width = ref.fast_hash_dim(d, tau)
            parts = ref.fast_hash_num_parts(m, d, tau)
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
            qw = torch.randn(bh, nq, d, generator=gen)
            got = ops.lsh_weighted_cumulation(qm, qc, qw, km, kc, k, v, tau)
            want = ref.lsh_weighted_cumulation(qm, qc, qw, km, kc, k, v, tau)
            bound = ref.lsh_weighted_cumulation(qm, qc, qw.abs(), km, kc, k.abs(), v.abs(), tau)
            assert bool(((got - want).abs() <= 1e-5 * bound + 1e-7).all()), "weighted differs"
            checked += 1
        # Chunked paths: tables above the workspace budget, split over columns
        # (dv 1100), hashes (m 20), heads (bh 3) and weight coordinates (w 40).
        for bh, nq, nk, w, dv, m, tau in [
            (2, 3, 5, 1, 1100, 3, 16),
            (3, 7, 9, 2, 64, 20, 16),
            (2, 6, 5, 40, 40, 3, 16),
        ]:
            qc = torch.randint(0, 3, (bh, nq, m), generator=gen, dtype=torch.int32)
            kc = torch.randint(0, 3, (bh, nk, m), generator=gen, dtype=torch.int32)
            qm = torch.rand(bh, nq, generator=gen) > 0.2
            km = torch.rand(bh, nk, generator=gen) > 0.2
            v = torch.randn(bh, nk, dv, generator=gen)
            qw = torch.randn(bh, nq, w, generator=gen)
            kw = torch.randn(bh, nk, w, generator=gen)
            ws = ops.lib.yoso_lsh_cumulation_workspace_bytes(bh, m, w, dv, tau)
            assert ws <= 256 << 20, ws
            got = ops.lsh_cumulation(qm, qc, km, kc, v, tau)
            want = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            got = ops.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, v, tau)
            want = ref.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, v, tau)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            checked += 1
        checked += check_emulated_backward(ops)
        print(f"emulate: {checked} cases match the reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="+", choices=("nvcc-only", "link", "emulate"))
    parser.add_argument("--verbose", action="store_true", help="show the extension build log")
    args = parser.parse_args()
    for mode in args.modes:
        start = time.perf_counter()
        print(f"=== {mode} ===", flush=True)
        if mode == "nvcc-only":
            check_nvcc_only()
        elif mode == "link":
            check_link(args.verbose)
        else:
            check_emulate()
        print(f"=== {mode}: OK in {time.perf_counter() - start:.1f} s ===", flush=True)


if __name__ == "__main__":
    main()
