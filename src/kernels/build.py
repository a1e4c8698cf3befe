"""JIT build of the two compiled YOSO extensions (CPU and CUDA), one cache.

``extension("cpu")`` / ``extension("cuda")`` return the built module for a
device type (built once per process, failures remembered so that a missing
compiler costs one attempt, not one per call).

Why: compiling at install time would tie the package to one machine; compiling
at import time would make ``import src.kernels`` slow and fragile. Instead the
first op call that needs a backend builds it here, once: the shared library
goes to ``$YOSO_BUILD_DIR`` (default ``~/.cache/yoso_lightning/build``) under a
directory named by a hash of everything that affects the binary (sources and
the headers they include, flags, torch / Python / CUDA versions, GPU
architectures). Later processes find the library there and just load it
(without importing ``torch.utils.cpp_extension``).

A cached library that cannot be loaded (truncated, garbage, wrong
architecture) is deleted with its object files and ninja state and rebuilt
once; ninja alone would call it up to date. If that rebuild fails too, the
error names the build folder to delete.

Concurrent processes are safe: the build goes through
``torch.utils.cpp_extension.load``, which serialises builds of one directory
with a lock on ``<build folder>/lock``. A process that finds the lock held
waits before loading the library, saying so on stderr. With torch <= 2.13 the
lock is the file's existence: a build killed mid-way leaves it behind, and
every later process waits until someone deletes it (as inside torch, which
waits silently); the message names the file. Later torch takes an OS lock on
the file, which dies with its holder.

Every failure (no ninja, no compiler, no CUDA toolkit, a compile error) is a
``RuntimeError`` with a readable message, which ``interface.py`` turns into a
one-time fallback warning for ``backend="auto"``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

BUILD_DIR_ENV_VAR = "YOSO_BUILD_DIR"
DEFAULT_BUILD_DIR = Path("~/.cache/yoso_lightning/build")
_LIB_EXT = ".pyd" if sys.platform == "win32" else ".so"
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)
_LOADED: dict[str, types.ModuleType] = {}  # device type -> built module, for this process
_FAILED: dict[str, str] = {}  # device type -> why it cannot be built here
# torch.utils.cpp_extension announces at import, where torch has CUDA but no GPU is
# visible, the toolkit it found; a CPU build does not use it.
_CUDA_HOME_NOTICE = "No CUDA runtime is found"
_LOCK_POLL_SECONDS = 0.5
_NO_GPU = (
    "the CUDA kernels need a GPU: torch.cuda.is_available() is False "
    "(no NVIDIA driver or no visible device)"
)

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
CPU_NAME = "yoso_cpu"
CPU_SOURCES = (CSRC_DIR / "cpu" / "yoso_cpu.cpp", CSRC_DIR / "cpu" / "yoso_cpu_kernels.cpp")
# No -march=native: the library may be shared between machines. The kernels
# carry their own AVX2 / AVX-512 variants behind a runtime CPU check.
# -ffp-contract=fast lets the compiler use FMA in those variants.
CPU_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast"]
CPU_LDFLAGS = ["-fopenmp"]
CUDA_NAME = "yoso_cuda_kernels"
CUDA_SOURCES = (CSRC_DIR / "cuda" / "binding.cpp", CSRC_DIR / "cuda" / "yoso_kernels.cu")
# No --use_fast_math: keep IEEE float32 rounding so results match the reference.
CUDA_CFLAGS = ["-O3", "-std=c++17", "-lineinfo"]


def build_root() -> Path:
    """Directory under which every extension gets its own keyed build directory."""
    return Path(os.environ.get(BUILD_DIR_ENV_VAR) or DEFAULT_BUILD_DIR).expanduser()


def _cxx_command() -> str | None:
    """The C++ compiler torch would call (``$CXX`` or ``c++``), resolved on PATH; None if absent."""
    cxx = os.environ.get("CXX")
    if cxx:
        parts = shlex.split(cxx)
        if not parts:
            return None
        return shutil.which(parts[0]) or (parts[0] if os.path.isfile(parts[0]) else None)
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def compiler_available() -> bool:
    """Whether a C++ compiler and ninja are present (a build may still fail)."""
    return _toolchain_problem(cuda=False) is None


def missing_tool(device_type: str) -> str | None:
    """Why the ``device_type`` extension cannot be built and run here, or None.

    None means every tool is present, not that the build works: tests skip
    where a tool is missing but fail where the build fails.
    """
    problem = _toolchain_problem(cuda=device_type == "cuda")
    if problem is None and device_type == "cuda" and not torch.cuda.is_available():
        problem = _NO_GPU
    return problem


def _toolchain_problem(cuda: bool) -> str | None:
    """The first missing build tool (ninja, C++ compiler, CUDA torch, nvcc), said as a sentence."""
    if not _ensure_ninja(raise_error=False):
        return "building the YOSO kernels needs ninja, which was not found: `pip install ninja`"
    if _cxx_command() is None:
        cxx = os.environ.get("CXX")
        where = f"CXX={cxx!r} does not name an existing program" if cxx else "no c++/g++ on PATH"
        return (
            f"building the YOSO kernels needs a C++ compiler: {where}. "
            "Install g++ (or set CXX to a working compiler)."
        )
    if cuda:
        if torch.version.cuda is None:
            return f"torch {torch.__version__} was built without CUDA; install a CUDA build of torch"
        from torch.utils.cpp_extension import CUDA_HOME

        if not CUDA_HOME or not Path(CUDA_HOME, "bin", "nvcc").is_file():
            return (
                "building the YOSO CUDA kernels needs the CUDA toolkit (nvcc): set CUDA_HOME "
                f"to it (found CUDA_HOME={CUDA_HOME!r})"
            )
    return None


def _ninja_runs() -> bool:
    """``ninja --version`` succeeds (torch's own check, without importing cpp_extension)."""
    try:
        subprocess.run(["ninja", "--version"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def _ensure_ninja(raise_error: bool = True) -> bool:
    """Make ``ninja`` callable: torch shells out to it, so it must be on PATH."""
    if _ninja_runs():
        return True
    # The pip package ships the binary; a venv that is used without being
    # activated does not have it on PATH.
    candidates = [Path(sys.executable).parent]
    with contextlib.suppress(ImportError, AttributeError):
        import ninja  # type: ignore[import-not-found]

        candidates.insert(0, Path(ninja.BIN_DIR))
    for folder in candidates:
        if (folder / "ninja").is_file() or (folder / "ninja.exe").is_file():
            os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
            if _ninja_runs():
                return True
    if raise_error:
        raise RuntimeError(
            "building the YOSO kernels needs ninja, which was not found: `pip install ninja`"
        )
    return False


def _check_toolchain(cuda: bool) -> None:
    problem = _toolchain_problem(cuda)
    if problem is not None:
        raise RuntimeError(problem)


class _DropCudaHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _CUDA_HOME_NOTICE not in record.getMessage()


@contextlib.contextmanager
def _quiet_cuda_home_notice() -> Iterator[None]:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." notice, and only it.

    torch emits it (as a log record or a UserWarning, depending on the version)
    when ``torch.utils.cpp_extension`` is first imported; for a CPU build it
    only suggests a problem that is not there.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    notice_filter = _DropCudaHomeNotice()
    logger.addFilter(notice_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"{_CUDA_HOME_NOTICE}.*")
            yield
    finally:
        logger.removeFilter(notice_filter)


def _cpp_extension(cuda: bool) -> types.ModuleType:
    """``torch.utils.cpp_extension``; for a CPU build without the CUDA_HOME notice."""
    if cuda:
        from torch.utils import cpp_extension
    else:
        with _quiet_cuda_home_notice():
            from torch.utils import cpp_extension
    return cpp_extension


def _local_files(sources: list[Path], include_paths: list[str]) -> list[Path]:
    """Sources plus the project headers they include (``#include "..."``), recursively."""
    seen: dict[Path, None] = {}
    stack = [Path(source).resolve() for source in sources]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen[path] = None
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in _INCLUDE_RE.findall(text):
            for folder in (path.parent, *map(Path, include_paths)):
                candidate = (folder / name).resolve()
                if candidate.is_file():
                    stack.append(candidate)
                    break
    return sorted(seen)


def _cuda_fingerprint() -> list[str]:
    """CUDA version and the GPU architectures the build targets."""
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not arch and torch.cuda.is_available():
        capabilities = {
            torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())
        }
        arch = ";".join(f"{major}.{minor}" for major, minor in sorted(capabilities))
    from torch.utils.cpp_extension import CUDA_HOME

    return [f"cuda={torch.version.cuda}", f"cuda_home={CUDA_HOME}", f"arch={arch}"]


def build_key(
    name: str,
    sources: list[Path],
    *,
    cuda: bool = False,
    flags: list[str] | None = None,
    include_paths: list[str] | None = None,
) -> str:
    """Short hash of everything that changes the built library."""
    digest = hashlib.sha256()
    items = [
        name,
        f"torch={torch.__version__}",
        f"python={sys.implementation.cache_tag}-{sys.version_info[:3]}",
        f"platform={sys.platform}",
        f"cxx={os.environ.get('CXX', '')}",
        *(flags or []),
        *(include_paths or []),
    ]
    if cuda:
        items += _cuda_fingerprint()
    for item in items:
        digest.update(item.encode() + b"\0")
    for path in _local_files(sources, include_paths or []):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _import_library(name: str, library: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the YOSO extension library {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _compiler_env() -> Iterator[None]:
    """Point torch at g++/clang++ when CXX is unset and there is no ``c++`` on PATH."""
    if os.environ.get("CXX") or shutil.which("c++"):
        yield
        return
    os.environ["CXX"] = _cxx_command() or "c++"
    try:
        yield
    finally:
        os.environ.pop("CXX", None)


def _library_path(
    name: str,
    sources: list[Path],
    cuda: bool,
    extra_cflags: list[str] | None,
    extra_cuda_cflags: list[str] | None,
    extra_include_paths: list[str] | None,
    extra_ldflags: list[str] | None,
) -> Path:
    """Where the library built from these sources and flags is cached (its folder is keyed)."""
    flags = [
        *(f"cflag={flag}" for flag in extra_cflags or []),
        *(f"cuda_cflag={flag}" for flag in extra_cuda_cflags or []),
        *(f"ldflag={flag}" for flag in extra_ldflags or []),
    ]
    include_paths = [str(path) for path in extra_include_paths or []]
    key = build_key(name, sources, cuda=cuda, flags=flags, include_paths=include_paths)
    return build_root() / f"{name}-{key}" / f"{name}{_LIB_EXT}"


@functools.cache
def _torch_lock_is_a_baton() -> bool:
    """Whether torch serialises builds with a baton file, whose mere existence blocks.

    torch <= 2.13 does (``FileBaton``: the ``lock`` file exists while a build
    runs, and stays forever if that build is killed); later torch holds an OS
    lock on a ``lock`` file that stays after every build (``filelock``), which
    the kernel releases when the holder dies. Read from torch's source, so
    that the cached path does not import ``torch.utils.cpp_extension``.
    """
    origin = getattr(importlib.util.find_spec("torch.utils.cpp_extension"), "origin", None)
    try:
        return origin is None or "FileBaton(" in Path(origin).read_text(encoding="utf-8")
    except OSError:
        return True


def _other_build_running(lock: Path) -> bool:
    """Whether another process holds torch's build lock of this folder (``lock``)."""
    if not lock.exists():
        return False
    if _torch_lock_is_a_baton():
        return True
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing to test the lock with
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # released and removed meanwhile
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _wait_for_other_build(name: str, lock: Path) -> None:
    """Wait while another process's build holds torch's lock (``lock``), saying so.

    torch would wait too, silently. With torch's baton file (torch <= 2.13) a
    killed build leaves the file behind and the wait never ends: the message
    names the file to delete then.
    """
    if not _other_build_running(lock):
        return
    if _torch_lock_is_a_baton():
        why = f"{lock} exists; if no build is running, e.g. one was killed, delete that file"
    else:
        why = f"it holds the lock on {lock}"
    print(f"YOSO {name} extension: waiting for another process's build ({why}) ...",
          file=sys.stderr, flush=True)
    while _other_build_running(lock):
        time.sleep(_LOCK_POLL_SECONDS)


def _remove_build_outputs(directory: Path, library: Path) -> None:
    """Delete the library, the object files and ninja's state, so that ninja rebuilds all.

    ninja compares time stamps and its log: an unloadable library newer than
    its sources counts as up to date, and so would objects of the same build.
    """
    doomed = [library, directory / ".ninja_log", directory / ".ninja_deps", *directory.glob("*.o")]
    for path in doomed:
        path.unlink(missing_ok=True)


def load_extension(
    name: str,
    sources: list[Path],
    *,
    cuda: bool = False,
    extra_cflags: list[str] | None = None,
    extra_cuda_cflags: list[str] | None = None,
    extra_include_paths: list[str] | None = None,
    extra_ldflags: list[str] | None = None,
    verbose: bool = False,
) -> types.ModuleType:
    """Load the cached build of a torch C++/CUDA extension module, or build it.

    A cached library that does not load is deleted and rebuilt once. "Building"
    is printed (stderr) only when a compile runs, with the time it took.

    Args:
        name: module name; must match ``TORCH_EXTENSION_NAME`` in the binding.
        sources: ``.cpp`` / ``.cu`` files.
        cuda: build with nvcc (requires CUDA torch and the toolkit).

    Raises:
        RuntimeError: a missing tool, or the build failed (the message names the
            build folder).
    """
    sources = [Path(source) for source in sources]
    missing = [str(source) for source in sources if not source.is_file()]
    if missing:
        raise RuntimeError(f"YOSO {name} extension sources not found: {missing}")
    library = _library_path(name, sources, cuda, extra_cflags, extra_cuda_cflags,
                            extra_include_paths, extra_ldflags)
    _wait_for_other_build(name, library.parent / "lock")
    unloadable = ""
    if library.is_file():
        try:
            return _import_library(name, library)
        except (ImportError, OSError) as error:  # garbage, truncated, another architecture
            unloadable = f"{type(error).__name__}: {error}"
        print(f"YOSO {name} extension: the cached {library} cannot be loaded ({unloadable}); "
              "deleting it and rebuilding.", file=sys.stderr, flush=True)
        _remove_build_outputs(library.parent, library)
    _check_toolchain(cuda)
    options = {
        "extra_cflags": list(extra_cflags or []),
        "extra_cuda_cflags": list(extra_cuda_cflags or []),
        "extra_ldflags": list(extra_ldflags or []),
        "extra_include_paths": [str(path) for path in extra_include_paths or []],
        "with_cuda": cuda,
        "verbose": verbose,
    }
    return _compile(name, sources, library.parent, options, unloadable)


def _compile(name: str, sources: list[Path], directory: Path, options: dict,
             unloadable: str) -> types.ModuleType:
    """Run torch's ninja build in ``directory``; a failure names the folder to delete."""
    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension = _cpp_extension(options["with_cuda"])
    minutes = "3-10" if options["with_cuda"] else "1"
    print(f"Building YOSO {name} extension (~{minutes} min) in {directory} ...",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        with _compiler_env():
            module = cpp_extension.load(name=name, sources=[str(source) for source in sources],
                                        build_directory=str(directory), **options)
    except Exception as error:  # compiler errors arrive as RuntimeError/CalledProcessError
        detail = str(error).strip()
        if len(detail) > 4000:
            detail = "...\n" + detail[-4000:]
        after = f" (rebuilding after the cached library failed to load: {unloadable})" if unloadable else ""
        raise RuntimeError(
            f"building the YOSO {name} extension failed{after}: {type(error).__name__}: {detail}\n"
            f"Build folder: {directory} (rerun with verbose=True for the full log). If the "
            f"sources and the compiler are fine, the cache is damaged: delete {directory} and retry."
        ) from error
    print(f"YOSO {name} extension built in {time.perf_counter() - start:.0f} s.",
          file=sys.stderr, flush=True)
    return module


def build_cpu(sources: list[Path] | None = None, verbose: bool = False) -> types.ModuleType:
    """Compile (or load from the cache) the CPU extension, from ``sources`` (default the real ones)."""
    return load_extension(CPU_NAME, list(sources or CPU_SOURCES), extra_cflags=CPU_CFLAGS,
                          extra_ldflags=CPU_LDFLAGS, verbose=verbose)


def cpu_library(sources: list[Path] | None = None) -> Path:
    """Where ``build_cpu(sources)`` caches its library (under ``build_root()``)."""
    return _library_path(CPU_NAME, [Path(source) for source in sources or CPU_SOURCES], False,
                         CPU_CFLAGS, None, None, CPU_LDFLAGS)


def wheel_cuda_include_dirs() -> list[Path]:
    """Header folders shipped by the torch wheel's ``nvidia`` packages.

    CUDA 13 builds of torch put the toolkit headers they were built with (among
    them ``cusparse.h``, which torch's CUDA headers include and which a bare
    toolkit may lack) under ``site-packages/nvidia/cu13/include``.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    major = (torch.version.cuda or "").split(".")[0]
    found = []
    for location in spec.submodule_search_locations:
        candidate = Path(location) / f"cu{major}" / "include"
        if major and candidate.is_dir():
            found.append(candidate)
    return found


def build_cuda(verbose: bool = False) -> types.ModuleType:
    """Compile (or load from the cache) the CUDA extension; needs nvcc, not a GPU."""
    if torch.version.cuda is None:
        raise RuntimeError(
            f"torch {torch.__version__} was built without CUDA; install a CUDA build of torch"
        )
    return load_extension(
        CUDA_NAME,
        list(CUDA_SOURCES),
        cuda=True,
        extra_cflags=["-O3"],
        extra_cuda_cflags=CUDA_CFLAGS,
        extra_include_paths=[str(path) for path in wheel_cuda_include_dirs()],
        verbose=verbose,
    )


def _build(device_type: str, verbose: bool) -> types.ModuleType:
    if device_type == "cpu":
        return build_cpu(verbose=verbose)
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(_NO_GPU)
        return build_cuda(verbose)
    raise RuntimeError(f"no compiled YOSO kernels for {device_type} tensors (only cpu and cuda)")


def extension(device_type: str, verbose: bool = False) -> types.ModuleType:
    """The compiled extension for ``device_type`` tensors, built on first use.

    Raises:
        RuntimeError: it cannot be built here (the reason is remembered and repeated).
    """
    if device_type in _LOADED:
        return _LOADED[device_type]
    if device_type in _FAILED:
        raise RuntimeError(_FAILED[device_type])
    try:
        module = _build(device_type, verbose)
    except Exception as error:  # a missing compiler, toolkit or GPU all land here
        _FAILED[device_type] = f"the YOSO {device_type} kernels are unavailable: {error}"
        raise RuntimeError(_FAILED[device_type]) from error
    _LOADED[device_type] = module
    return module
