"""SIGTERM / SIGINT to the whole process group of a run with DataLoader workers.

``timeout`` and SLURM signal every process of the job step, DataLoader workers
included; Ctrl+C in a terminal does the same with SIGINT. The run saves
``last.ckpt`` of the current step once, exits 128 + signal and prints the command
that resumes it; that command continues exactly. Steps 5 and 7 are neither
periodic saves (every 2) nor validations (every 3).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_resume import STEPS, overrides, run_dir, weights
from tests.test_train import ROOT

WORKERS = "--data.init_args.num_workers=2"  # as every LRA config


def run_in_own_group(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <args>`` as the leader of a new process group (a signal to the group spares pytest)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    left = group_members(process.pid)
    assert not left, f"processes left in the run's group: {left}"  # workers and ranks are gone too
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def group_members(group: int, grace_s: float = 10.0) -> list[str]:
    """Command lines still in process group ``group`` after up to ``grace_s`` (exiting ones may linger)."""
    deadline = time.monotonic() + grace_s
    while True:
        found = subprocess.run(["pgrep", "-a", "-g", str(group)], capture_output=True, text=True).stdout
        if not found.strip() or time.monotonic() > deadline:
            return found.splitlines()
        time.sleep(0.2)


def signal_group_at(step: int, name: str) -> str:
    return ("--trainer.callbacks+={\"class_path\": \"tests.run_helpers.SignalAtStep\", \"init_args\": "
            f"{{\"step\": {step}, \"signal_name\": \"{name}\", \"target\": \"group\"}}}}")


def record_saves(path: Path) -> str:
    return ("--trainer.callbacks+={\"class_path\": \"tests.run_helpers.RecordSaves\", "
            f"\"init_args\": {{\"path\": \"{path}\"}}}}")


def resume_args(stderr: str) -> list[str]:
    """The arguments of the printed resume command (``python train.py ...``), without ``python``."""
    lines = stderr.splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith("Resume with:"))
    command = shlex.split(lines[index + 1])
    assert command[:2] == ["python", "train.py"], command
    return command[1:]


def saves_at(record: Path, step: int) -> list[str]:
    return [line for line in record.read_text().splitlines() if line.endswith(f" {step}")]


def assert_same_weights(got: Path, expected: Path) -> None:
    want, have = weights(expected), weights(got)
    assert want.keys() == have.keys()
    for key in want:
        torch.testing.assert_close(have[key], want[key], atol=1e-6, rtol=0, msg=key)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run, with two DataLoader workers; returns its final last.ckpt."""
    base = tmp_path_factory.mktemp("signals")
    done = run_in_own_group(["train.py", *overrides(base, base / "straight"), WORKERS])
    assert done.returncode == 0, done.stderr[-3000:]
    last = run_dir(base / "straight", 0) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == STEPS
    return last


def assert_stopped(done: subprocess.CompletedProcess, name: str, code: int, last: Path, step: int,
                   record: Path) -> list[str]:
    """Exit code, ``last.ckpt`` of the step, written once, the message; returns the resume command's args."""
    assert done.returncode == code, done.stderr[-3000:]
    assert "killed by signal" not in done.stderr  # the workers ignored it; the main process stopped them
    assert torch.load(last, weights_only=True)["global_step"] == step
    assert saves_at(record, step) == [f"0 {step}"]  # written once
    assert f"Stopped by {name} at step {step}; saved {last}. Resume with:" in done.stderr
    args = resume_args(done.stderr)
    assert args[-2:] == ["--ckpt_path", str(last)]
    return args


@pytest.mark.slow
def test_sigterm_then_sigint_to_the_group_save_exit_and_resume_exactly(straight, tmp_path):
    root, record = tmp_path / "run", tmp_path / "saves.txt"
    stopped = run_in_own_group(["train.py", *overrides(tmp_path, root), WORKERS,
                                signal_group_at(5, "SIGTERM"), record_saves(record)])
    last = run_dir(root, 0) / "checkpoints" / "last.ckpt"
    args = assert_stopped(stopped, "SIGTERM", 143, last, 5, record)

    # the printed command resumes; Ctrl+C (SIGINT to the group, as a terminal sends it) stops it at step 7
    interrupted = run_in_own_group([*args, signal_group_at(7, "SIGINT")])
    last = run_dir(root, 1) / "checkpoints" / "last.ckpt"
    args = assert_stopped(interrupted, "SIGINT", 130, last, 7, record)

    resumed = run_in_own_group(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(run_dir(root, 2) / "checkpoints" / "last.ckpt", straight)
