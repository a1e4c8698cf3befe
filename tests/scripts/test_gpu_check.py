"""scripts/gpu_check.sh and benchmarks/gpu_timing.py without a GPU: plan, arguments, outputs, locks.

The GPU visit they prepare is one bounded command whose results come back from one
folder, so these tests check the bounds (caps, file count) and that results are on
disk before a run is cut short.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["env", "locks", "build", "tests", "memcheck", "racecheck", "timing", "profile", "train"]
MAX_FILES = 8


def run_check(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def plan_caps(stdout: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s+\d+\. (\w+)\s+cap\s+(\d+) s", stdout, re.M)}


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("out", [None, "collect"])
def test_dry_run_prints_every_step_within_the_limit_and_the_folder(tmp_path, out):
    env = {"OUT": str(tmp_path / out)} if out else {}
    if not out:
        env["OUT"] = ""
    done = run_check("--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    caps = plan_caps(done.stdout)
    assert list(caps) == STEPS
    assert sum(caps.values()) <= 540
    assert f"total: {sum(caps.values())} s" in done.stdout
    folder = tmp_path / out if out else ROOT / "benchmarks" / "results" / "gpu"
    assert f"output folder: {folder}" in done.stdout
    assert not (tmp_path / "collect").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--step"], "--step needs a step name"),
    (["--step", "nope"], "unknown step 'nope'"),
    (["--device", "tpu"], "--device must be cuda or cpu"),
])
def test_argument_errors_are_clear(args, message):
    done = run_check(*args)
    assert done.returncode == 2
    assert message in done.stderr and "steps: env locks build" in done.stderr


def test_lock_step_removes_stale_build_locks(tmp_path):
    build_root = tmp_path / "build"
    lock = build_root / "yoso_cuda_kernels-0123" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    out = tmp_path / "out"
    done = run_check("--step", "locks", env={"YOSO_BUILD_DIR": str(build_root), "OUT": str(out)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not lock.exists()
    assert "removed stale lock file(s)" in done.stdout
    assert "SUMMARY locks=ok" in done.stdout
    assert [p.name for p in files_under(out)] == ["gpu_check.log"]


def test_uses_python3_when_python_is_absent(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in ("bash", "dirname", "sed", "tee", "timeout", "date", "mkdir", "find", "cat", "tail"):
        found = shutil.which(tool)
        if found:
            (shims / tool).symlink_to(found)
    python3 = shims / "python3"  # a wrapper, not a link: a venv's python finds its packages by path
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    env = {"PATH": str(shims), "PYTHON": "", "OUT": str(tmp_path / "out")}
    done = run_check("--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert "python: python3" in done.stdout
    done = run_check("--step", "env", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nvidia-smi: not found" in done.stdout
    assert "torch" in done.stdout and "SUMMARY env=ok" in done.stdout


def test_cpu_run_keeps_the_output_folder_small(tmp_path):
    out = tmp_path / "out"
    done = run_check("--device", "cpu", "--step", "env", "--step", "timing", "--step", "train",
                     env={"OUT": str(out)}, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "SUMMARY env=ok timing=ok train=skipped" in done.stdout
    names = sorted(p.relative_to(out).as_posix() for p in files_under(out))
    assert names == ["gpu_check.log", "timing.csv", "timing.md", "timing.png"]
    assert len(names) <= MAX_FILES
    with open(out / "timing.csv") as f:
        assert len(list(csv.DictReader(f))) == 20  # 2 lengths x 2 shapes x 5 attentions


def test_timing_rows_are_on_disk_before_the_run_ends(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "benchmarks/gpu_timing.py", "sweep", "--device", "cpu", "--out", str(out),
           "--lengths", "32", "64", "128", "256", "--shapes", "1x2", "--head-dim", "8", "--warmup", "1",
           "--repeats", "1", "--attentions", "softmax", "softmax-bf16"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        first = ""
        while "n=" not in first:  # the title line comes first, then one line per row
            first = proc.stdout.readline()
            assert first, "the sweep ended before printing a row"
        proc.send_signal(signal.SIGKILL)  # no chance to write anything more
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with open(out / "timing.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[0]["attention"] == "softmax" and rows[0]["length"] == "32"
    assert rows[0]["status"] == "ok" and float(rows[0]["median_ms"]) > 0
    assert "| 1 | 2 | 32 | softmax | ok |" in (out / "timing.md").read_text()


def test_timing_points_over_their_cap_or_budget_are_skipped_with_a_reason(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_timing

    args = gpu_timing.parser().parse_args(["sweep", "--point-cap-s", "5", "--budget-s", "100"])
    state = {"memory": 1e12, "oom": {}, "last": {("softmax", 1, 16): (1024, 1.0)}, "start": time.monotonic()}
    assert "point cap" in gpu_timing.skip_reason("softmax", 1, 16, 4096, args, state)
    assert gpu_timing.skip_reason("softmax", 1, 16, 1024, args, {**state, "last": {}}) is None
    state["oom"][("yoso-16", 1, 16)] = 8192
    assert "out of memory at n=8192" in gpu_timing.skip_reason("yoso-16", 1, 16, 16384, args, state)
    small = {**state, "oom": {}, "memory": 1e6}
    assert "needs ~" in gpu_timing.skip_reason("yoso-16", 1, 16, 16384, args, small)
    state["start"] -= 200
    assert "budget spent" in gpu_timing.skip_reason("softmax", 1, 16, 1024, args, {**state, "last": {}})


def test_timing_argument_errors_are_clear():
    done = subprocess.run([sys.executable, "benchmarks/gpu_timing.py", "sweep", "--shapes", "32"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "shape must be BxH" in done.stderr
    done = subprocess.run([sys.executable, "benchmarks/gpu_timing.py", "sweep", "--device", "cuda"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:  # no GPU here: a clear exit, not a traceback
        assert "torch.cuda.is_available() is False" in done.stderr
