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
    ``.so`` (``nm -D`` must list the ``yoso_*`` launchers and the pybind
    module init) and says so.

``emulate``
    Run the kernels' own source on the CPU against ``reference.py``: the
    ``.cu`` file is translated to C++ (``kernel<<<...>>>(...)`` becomes a call
    to a small emulator that runs every block and thread, with a real barrier
    for ``__syncthreads``), compiled with g++ and called through ctypes. This
    checks the index arithmetic, tails, chunking and masks of the kernels
    without a GPU; only the binding is not exercised (the Gaussian hash's GEMM is
    mirrored with torch.bmm). Three runs: the plain build; a build whose grids
    are capped at 2 blocks (every grid-stride loop runs several rounds); and
    the ``asan`` run below. Every launch's dynamic shared memory is checked
    against the limit its kernel opted in to. Needs g++ (C++20); the ASan run
    is skipped, with a line saying so, where gcc has no libasan.

``asan``
    The emulation's checks on an AddressSanitizer build (``-fsanitize=address``,
    run in a child process with libasan preloaded): any out-of-bounds read or
    write of a tensor or of a block's shared memory fails. Part of ``emulate``;
    alone, it fails where libasan is missing.

Examples (from the repository root)::

    python scripts/check_cuda_build.py nvcc-only
    /tmp/cuda-venv/bin/python scripts/check_cuda_build.py link
    python scripts/check_cuda_build.py emulate
    python scripts/check_cuda_build.py asan
"""

from __future__ import annotations

import argparse
import os
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
    "yoso_pack_sign_bits",
    "yoso_hash_fast",
    "yoso_lsh_cumulation",
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
    names = ("hash_gaussian", "hash_fast", "lsh_cumulation", "lsh_backward")
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
def _emulator():
    """The emulator lives with the tests (tests/kernels/cuda_emulator.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.kernels import cuda_emulator

    return cuda_emulator


def check_emulate() -> None:
    emulator = _emulator()
    emulator.check_emulate()
    emulator.check_small_grid()
    if emulator.has_sanitizer("asan"):
        check_asan()
    else:
        print("asan: SKIPPED, gcc has no libasan (gcc -print-file-name=libasan.so)", flush=True)


def check_asan() -> None:
    emulator = _emulator()
    if not emulator.has_sanitizer("asan"):
        raise SystemExit("asan mode needs gcc's libasan (gcc -print-file-name=libasan.so)")
    start = time.perf_counter()
    emulator.check_asan()
    print(f"asan: OK in {time.perf_counter() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="+", choices=("nvcc-only", "link", "emulate", "asan"))
    parser.add_argument("--verbose", action="store_true", help="show the extension build log")
    args = parser.parse_args()
    for mode in args.modes:
        start = time.perf_counter()
        print(f"=== {mode} ===", flush=True)
        if mode == "nvcc-only":
            check_nvcc_only()
        elif mode == "link":
            check_link(args.verbose)
        elif mode == "asan":
            check_asan()
        else:
            check_emulate()
        print(f"=== {mode}: OK in {time.perf_counter() - start:.1f} s ===", flush=True)


if __name__ == "__main__":
    main()
