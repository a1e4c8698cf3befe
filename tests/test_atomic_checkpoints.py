"""Checkpoint files are replaced atomically: a kill or a full disk never leaves a torn or lost checkpoint.

The real-process tests put the log folder on a tmpfs of its own (another filesystem
than ``$TMPDIR``, where Lightning's default IO wrote first and then copied over the
old file); they are skipped where this process cannot mount one.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

import src.checkpoint_io as checkpoint_io
from src.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    remove_stale_temporaries,
    use_atomic_checkpoints,
)
from tests.test_resume import overrides, run_dir
from tests.test_train import ROOT


def callback(class_path: str, **init_args: object) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh 256 MB tmpfs mounted for this test (root only); skips where mounting is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip() or done.returncode}); "
                    "this test needs root and CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.mark.slow
def test_kill_during_a_write_keeps_the_previous_checkpoint_and_tmpdir_clean(tmp_path, tmpfs):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    assert os.stat(tmpdir).st_dev != os.stat(tmpfs).st_dev  # the log folder is on another filesystem
    folder = run_dir(tmpfs, 0) / "checkpoints"
    # step 3: validation (best-*.ckpt, last.ckpt); step 4: the periodic last.ckpt, killed while written
    done = run(*overrides(tmp_path, tmpfs), callback("tests.run_helpers.KillDuringCheckpointWrite",
                                                      step=4, folder=str(folder)),
               env={"TMPDIR": str(tmpdir)})
    assert done.returncode == -9, done.stderr[-3000:]

    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3  # the previous one, whole
    assert list(tmpdir.iterdir()) == []  # no orphan copy in $TMPDIR
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible[-1] == "last.ckpt" and visible[0].startswith("best-step3-"), visible
    hidden = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert [p.name.startswith(".last.ckpt.tmp-") for p in hidden] == [True]  # the killed write's temporary
    remove_stale_temporaries(folder)  # what the next save into this folder does first
    assert not any(p.name.startswith(".") for p in folder.iterdir())


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_no_torn_file(tmp_path, tmpfs):
    folder = tmpfs / "checkpoints"
    # after step 3, 64 kB stay free: the best-step3 checkpoint of that validation does not fit
    done = run(*overrides(tmp_path, tmp_path / "logs"), f"--checkpoint.init_args.dirpath={folder}",
               callback("tests.run_helpers.FillDiskAtStep", step=3, folder=str(tmpfs / "fill")))
    assert done.returncode == 1, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: no space left on device: could not write checkpoint best-step3-")
    assert f" in {folder} (" in last_line and "Traceback" not in done.stderr
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]  # no torn best-*.ckpt, no temporary
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes (what a full disk does)."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_enospc_inside_torch_save_is_a_one_line_error(tmp_path, monkeypatch):
    """No mount needed: ``open`` in the IO module gives a file that fills up after 1000 bytes."""
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"previous")
    real_open = open
    monkeypatch.setattr(checkpoint_io, "open", lambda *a, **k: _FullDisk(real_open(*a, **k), 1000),
                        raising=False)
    with pytest.raises(CheckpointWriteError) as caught:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4096)}}, path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "no space left on device" in message
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_other_errors_pass_through_and_leave_no_temporary(tmp_path):
    path = tmp_path / "last.ckpt"
    with pytest.raises(Exception):  # noqa: B017 (whatever torch.save raises for an unpicklable object)
        AtomicCheckpointIO().save_checkpoint({"bad": lambda: None}, path)
    assert list(tmp_path.iterdir()) == []


class _OwnIO(TorchCheckpointIO):
    """A config's own CheckpointIO."""


@pytest.mark.parametrize(("plugins", "expected"), [
    (None, AtomicCheckpointIO),  # Lightning's default TorchCheckpointIO is replaced
    ([AsyncCheckpointIO()], AsyncCheckpointIO),  # kept asynchronous, writing atomically inside
    ([_OwnIO()], _OwnIO),  # a config's own IO decides itself
])
def test_the_trainer_saves_atomically_unless_the_config_names_its_own_io(plugins, expected):
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, plugins=plugins)
    io = use_atomic_checkpoints(trainer)
    assert type(io) is expected and trainer.strategy.checkpoint_io is io
    if expected is AsyncCheckpointIO:
        assert type(io.checkpoint_io) is AtomicCheckpointIO
