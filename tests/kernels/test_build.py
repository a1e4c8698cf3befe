"""The build of the CPU extension: failures fail, a damaged cache is rebuilt, messages say what ran.

Each build runs in a child process with its own ``YOSO_BUILD_DIR``: a fresh
process is what meets a cache in real use, and it keeps this process's
extension (and torch's in-process record of JIT builds) untouched. One test
compiles the extension (about 1.5 min on 2 cores); the others compile sources
that fail at once. All of them need a C++ compiler, except the skip check.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from src.kernels import build

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
needs_compiler = pytest.mark.skipif(not build.compiler_available(), reason="needs a C++ compiler and ninja")


INJECTED_ERROR = '#include "injected_compile_error.h"'


def broken_cpu_sources(folder: Path) -> list[Path]:
    """A copy of the CPU sources (headers included) whose compiled files include a missing
    header: a fatal compile error at line 1, so the failing build takes seconds, not a minute
    (after an ``#error`` the compiler would go on parsing torch's headers)."""
    copy = folder / "cpu"
    shutil.copytree(build.CSRC_DIR / "cpu", copy)
    sources = [copy / source.name for source in build.CPU_SOURCES]
    for source in sources:
        source.write_text(f"{INJECTED_ERROR}\n{source.read_text()}")
    return sources


def run_python(args: list[str], build_root: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """A child Python with the repository importable and ``YOSO_BUILD_DIR=build_root``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{build.BUILD_DIR_ENV_VAR: str(build_root)})
    env.pop("YOSO_BACKEND", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@needs_compiler
def test_broken_build_fails_kernel_tests_and_no_compiler_skips_them(tmp_path):
    """The kernel tests' helper, in a pytest child run: a compile error is a failure naming
    the error and the build folder; only a missing compiler is a skip."""
    sources = broken_cpu_sources(tmp_path)
    test_file = tmp_path / "test_uses_extension.py"
    test_file.write_text(textwrap.dedent(f"""
        from pathlib import Path

        from src.kernels import build
        from tests.kernels.extension import compiled_extension

        SOURCES = [Path(p) for p in {[str(s) for s in sources]!r}]


        def test_with_compiler():
            compiled_extension("cpu", lambda: build.build_cpu(SOURCES))


        def test_without_compiler(monkeypatch):
            monkeypatch.setenv("CXX", "/no/such/c++")
            compiled_extension("cpu", lambda: build.build_cpu(SOURCES))
    """))
    done = run_python(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", test_file.name],
                      tmp_path / "build", cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "1 failed, 1 skipped" in out, out
    assert "FAILED test_uses_extension.py::test_with_compiler" in out, out
    assert "injected_compile_error.h" in out and "failed to build although its tools are present" in out
    assert "delete" in out and str(tmp_path / "build") in out, out
    assert "SKIPPED" in out and "needs a C++ compiler" in out, out


@needs_compiler
def test_unloadable_cached_library_is_rebuilt_and_a_second_run_is_quiet(tmp_path, monkeypatch):
    """Random bytes where the library is cached: the next run deletes them, rebuilds once and
    runs the compiled kernels; the run after that loads the library and prints nothing."""
    root = tmp_path / "build"
    monkeypatch.setenv(build.BUILD_DIR_ENV_VAR, str(root))
    library = build.cpu_library()
    library.parent.mkdir(parents=True)
    library.write_bytes(os.urandom(4096))
    check = textwrap.dedent(f"""
        import sys

        import torch

        from src.kernels import build, reference

        extension = build.extension("cpu")
        assert extension.__file__ == {str(library)!r}, extension.__file__
        g = torch.Generator().manual_seed(0)
        codes = [torch.randint(0, 16, (2, n, 3), generator=g, dtype=torch.int32) for n in (9, 11)]
        masks = [torch.rand(2, n, generator=g) > 0.2 for n in (9, 11)]
        value = torch.randn(2, 11, 5, generator=g)
        args = (masks[0], codes[0], masks[1], codes[1], value, 4)
        torch.testing.assert_close(extension.lsh_cumulation(*args), reference.lsh_cumulation(*args))
        print("cpp_extension imported:", "torch.utils.cpp_extension" in sys.modules)
    """)
    first = run_python(["-c", check], root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "cannot be loaded" in first.stderr and "deleting it and rebuilding" in first.stderr
    assert "Building YOSO yoso_cpu extension" in first.stderr, first.stderr
    assert "extension built in" in first.stderr, first.stderr
    assert library.stat().st_size > 100_000  # the real library replaced the 4 KiB of noise
    second = run_python(["-c", check], root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Building" not in second.stderr and "CUDA" not in second.stderr, second.stderr
    assert "cpp_extension imported: False" in second.stdout


@needs_compiler
def test_failed_rebuild_of_an_unloadable_library_names_the_folder(tmp_path):
    sources = broken_cpu_sources(tmp_path)
    script = textwrap.dedent(f"""
        from pathlib import Path

        from src.kernels import build

        sources = [Path(p) for p in {[str(s) for s in sources]!r}]
        library = build.cpu_library(sources)
        library.parent.mkdir(parents=True)
        library.write_bytes(b"not a shared library")
        try:
            build.build_cpu(sources)
        except RuntimeError as error:
            print(error)
            assert not library.exists(), "the unloadable library was kept"
        else:
            raise AssertionError("a broken build succeeded")
    """)
    done = run_python(["-c", script], tmp_path / "build")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = next((tmp_path / "build").iterdir())
    assert "cached library failed to load" in done.stdout, done.stdout
    assert f"delete {folder} and retry" in done.stdout, done.stdout


@pytest.mark.parametrize("baton", [True, False], ids=["baton-file", "os-lock"])
def test_waits_for_another_build_and_names_its_lock(tmp_path, capsys, monkeypatch, baton):
    """Another build holds torch's lock (``<folder>/lock``): wait, naming the file (and, for
    torch <= 2.13's baton file, that a killed build leaves it behind to delete); go on when it
    is released. The file torch >= 2.14 leaves after every build, unlocked, is no reason to wait."""
    monkeypatch.setattr(build, "_torch_lock_is_a_baton", lambda: baton)
    lock = tmp_path / "lock"
    lock.touch()
    if baton:
        release = lock.unlink
    else:
        fcntl = pytest.importorskip("fcntl")
        holder = os.open(lock, os.O_RDONLY)
        fcntl.flock(holder, fcntl.LOCK_EX)  # as filelock does, on its own descriptor

        def release() -> None:
            os.close(holder)

    threading.Timer(0.3, release).start()
    start = time.perf_counter()
    build._wait_for_other_build("yoso_cpu", lock)
    assert time.perf_counter() - start >= 0.25
    err = capsys.readouterr().err
    assert str(lock) in err and "waiting for another process's build" in err
    assert ("delete that file" in err) == baton
    if not baton:
        assert lock.exists()
        build._wait_for_other_build("yoso_cpu", lock)
        assert capsys.readouterr().err == ""


def test_cuda_home_notice_is_dropped_only_for_cpu_builds(caplog):
    """Importing torch.utils.cpp_extension on a GPU-less machine with a CUDA toolkit logs
    "No CUDA runtime is found, using CUDA_HOME=..."; the CPU build drops that record only."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with build._quiet_cuda_home_notice():
            logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
            logger.warning("another warning")
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["another warning", "No CUDA runtime is found, using CUDA_HOME='/usr/local'"]
