"""Checkpoint files that are either the old one or the new one, never half of either.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the file is
written in ``$TMPDIR`` and then moved over the target. When the log folder is on
another filesystem, that move is a copy: a kill during it leaves the previous
``last.ckpt`` truncated, and the temporary file stays behind in ``$TMPDIR``.
``AtomicCheckpointIO`` writes to a temporary name in the target's own folder,
fsyncs it, and renames it over the target (atomic within one filesystem).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}-(?P<host>.+)$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space, quota); the message is one line naming the folder."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic: temporary file in the same folder, fsync, rename.

    Remote paths (``s3://`` ...) keep Lightning's behaviour: an object store has no
    rename, and its uploads are already all-or-nothing.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_write(Path(path), lambda file: torch.save(checkpoint, file))


class _RecordingFile:
    """A write-only file that remembers its OSError (``torch.save`` may wrap it in a RuntimeError)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(file)`` so that a reader sees the old file or the whole new one.

    On any failure (a full disk, an exception, Ctrl+C) the temporary file is removed;
    a SIGKILL leaves it as a hidden ``.<name>.tmp-<pid>-...`` file, removed by the
    next save in that folder. A full disk raises ``CheckpointWriteError``.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    temporary = folder / temporary_name(path.name)
    recorder: _RecordingFile | None = None
    try:
        with open(temporary, "xb") as file:
            recorder = _RecordingFile(file)
            write(recorder)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_folder(folder)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else error
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            failure = CheckpointWriteError(no_space_message(path, cause))  # str(): the message alone
            failure.errno = cause.errno
            raise failure from None
        raise


def no_space_message(path: Path, error: OSError) -> str:
    """One line: what could not be written, where, and that the previous file is intact."""
    reason = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
    free = _free_mb(path.parent)
    shown = f" ({free:.0f} MB free)" if free is not None else ""
    return (f"{reason}: could not write checkpoint {path.name} in {path.parent}{shown}; "
            f"any previous {path.name} there is unchanged. Free space or point the logs elsewhere "
            "(--trainer.default_root_dir).")


def _free_mb(folder: Path) -> float | None:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize / 2**20


def temporary_name(name: str) -> str:
    """Hidden, not ending in ``.ckpt`` (so ``ModelCheckpoint`` and ``last.ckpt`` globs skip it), unique."""
    return f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}-{socket.gethostname()}"


def remove_stale_temporaries(folder: Path) -> None:
    """Remove temporaries that processes of this host, now dead, left behind (a SIGKILL mid-write)."""
    host = socket.gethostname()
    for entry in folder.iterdir():
        match = _TEMP.match(entry.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it must not bring the old file back)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems do not fsync folders
    finally:
        os.close(descriptor)


def use_atomic_checkpoints(trainer: Trainer) -> CheckpointIO:
    """Make the trainer save through ``AtomicCheckpointIO`` unless the config chose its own IO.

    ``TorchCheckpointIO`` (Lightning's default) is replaced, also inside an
    ``AsyncCheckpointIO`` from ``trainer.plugins``; any other ``CheckpointIO`` a config
    names in ``trainer.plugins`` is kept as it is (it decides how files are written).
    """
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif type(current) is AsyncCheckpointIO and type(current.checkpoint_io) is TorchCheckpointIO:
        # a new wrapper: the inner IO of one already in use can no longer be replaced
        strategy.checkpoint_io = AsyncCheckpointIO(AtomicCheckpointIO())
    return strategy.checkpoint_io
