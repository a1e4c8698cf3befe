"""conv_share.py runs end to end on a tiny layer, under the allocator policy it re-executes
itself with (no timing asserts: timings live in benchmarks/results)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--length", "48", "--batch", "2", "--heads", "2", "--head-dim", "8", "--hash-code-len", "4",
        "--num-hashes", "2", "--window", "5", "--pairs", "3"]


def run_conv_share(*extra: str) -> str:
    done = subprocess.run([sys.executable, "benchmarks/conv_share.py", *TINY, *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_tiny_run_reports_both_shares_under_the_heap_policy():
    out = run_conv_share()
    assert "allocator policy heap" in out
    layer, plain = map(float, re.search(r"fwd\+bwd: ([\d.]+) ms, without the convolution ([\d.]+) ms", out)
                       .groups())
    assert layer > 0 and plain > 0
    assert re.search(r"op pair alone \(forward \+ backward\): [\d.]+ ms = [\d.]+ % of the layer", out)
    assert "median of 3 adjacent pairs" in out


def test_policy_environment_reaches_the_process(monkeypatch):
    """``reexec_with_allocator`` restarts with the policy's variables, and only when they are missing."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import harness

    calls = []
    monkeypatch.setattr(harness.os, "execve", lambda path, args, env: calls.append(env))
    for name in harness.MALLOC_POLICIES["heap"]:
        monkeypatch.delenv(name, raising=False)
    harness.reexec_with_allocator("glibc")
    assert calls == []
    harness.reexec_with_allocator("heap")
    assert len(calls) == 1 and all(calls[0][k] == v for k, v in harness.MALLOC_POLICIES["heap"].items())
    for name, value in harness.MALLOC_POLICIES["heap"].items():
        monkeypatch.setenv(name, value)
    harness.reexec_with_allocator("heap")
    assert len(calls) == 1
