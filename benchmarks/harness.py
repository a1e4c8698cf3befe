"""What every benchmark script shares: one point per worker process, timed and measured alike.

A point (an attention or a model at one length) runs in a fresh process so that
its peak memory is its own and an out-of-memory point cannot take the others down.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

# Allocator settings for the worker processes (``--malloc``). glibc keeps freed blocks
# of up to 32 MiB in its heap (its mmap threshold rises to the largest block freed), so
# by default peak RSS also counts memory the process no longer uses; which attention
# that inflates more depends on its allocation sizes, not on what it keeps alive. A
# fixed threshold returns every block >= 128 KiB to the OS when freed: peak RSS then
# tracks the peak of live tensors (checked against torch.profiler's memory events).
# "heap" is the opposite: blocks up to 1 GiB come from the heap and freed memory stays
# there, so after the first steps little is page-faulted in again. In recorded run 5
# (benchmarks/results/cpu_2core_run5.log) conv_share.py's per-pair differences had
# quartiles 8.4-38.3 ms under glibc's defaults and 9.8-13.0 ms under "heap", and the
# YOSO-C layer step took 146.6 vs 117.2 ms.
MALLOC_POLICIES: dict[str, dict[str, str]] = {
    "glibc": {},
    "mmap": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    "heap": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
             "MALLOC_TOP_PAD_": str(1 << 28)},
}


def reexec_with_allocator(policy: str) -> None:
    """Restart this script under allocator ``policy`` unless it already runs under it.

    glibc reads these variables once, at start-up: an in-process benchmark needs them
    in its own environment.
    """
    wanted = MALLOC_POLICIES[policy]
    if any(os.environ.get(name) != value for name, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_and_peak(step: Callable[[], None], device_type: str, repeats: int,
                  count_warmup_memory: bool = False) -> dict:
    """Median wall time of ``repeats`` calls of ``step`` after one warm-up, and the peak memory.

    Peak = CUDA allocator peak, or growth of the process's peak RSS on the CPU, over
    the state before the warm-up (``count_warmup_memory``: e.g. optimizer state the
    first step creates) or after it (the step alone).
    """
    import torch

    def sync() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    def current() -> int:
        return torch.cuda.memory_allocated() if device_type == "cuda" else rss_bytes()

    base = current() if count_warmup_memory else None
    step()  # warm-up: builds kernels, fills caches
    sync()
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if base is None:
        base = current()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device_type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"median_s": statistics.median(times), "peak_bytes": max(peak, 0)}


def run_point(cmd: list[str], timeout: float, malloc: str = "glibc") -> dict:
    """Run one worker command (allocator policy ``malloc``); its last stdout line is the JSON result."""
    env = {**os.environ, **MALLOC_POLICIES[malloc]}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout>{timeout:.0f}s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed: {last[:80]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    return result
