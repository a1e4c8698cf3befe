"""Preparing a shared data folder from many processes at once: a lock, private names, atomic renames.

An array job's tasks, the nodes of a multi-node run or two shells may generate or
preprocess the same folder at the same moment. Each process writes under a name of its
own (``<target>.tmp-<host>-<pid>-<random>``) and publishes with an atomic rename. The work
runs under an exclusive ``fcntl.flock`` lock on a file beside the target, and a process
that waited for the lock checks again whether another finished meanwhile: the work is done
once and every process reads the same bytes.

``flock`` works between processes of one machine and, on Linux, on NFS (emulated with
POSIX locks), Lustre mounted with ``flock`` and GPFS. Where the filesystem refuses locks
(e.g. Lustre with ``noflock``) we warn once and go on without one: private names and
atomic renames still keep every published file whole; only the work may be done twice.

Staging left by a killed process is removed by the next preparer: on the same host when
its process id is gone, from another host when nothing in it changed for two days.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

STAGING_MARK = ".tmp-"
FOREIGN_STALE_AFTER_S = 2 * 24 * 3600
"""Age after which staging of another host counts as abandoned (we cannot ask whether its process lives)."""

_TAG = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_warned_no_locks: set[str] = set()


def unique_tag() -> str:
    """``<host>-<pid>-<random>``: a name no other process on any node uses."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def staging_path(target: Path) -> Path:
    """A private name beside ``target`` (same filesystem, so the final rename is atomic)."""
    return target.with_name(f"{target.name}{STAGING_MARK}{unique_tag()}")


def staging_owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) of a staging name made by ``staging_path``; ``None`` for any other name."""
    _, mark, tag = path.name.rpartition(STAGING_MARK)
    match = _TAG.match(tag) if mark else None
    return (match["host"], int(match["pid"])) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` and, for a folder, of what it holds."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [child.lstat().st_mtime for child in path.rglob("*")]
    return max(times)


def is_stale(path: Path, now: float | None = None) -> bool:
    """Staging of a dead process: same host and pid gone, or another host's and long untouched."""
    owner = staging_owner(path)
    if owner is None:
        return False
    host, pid = owner
    if host == socket.gethostname():
        return not pid_alive(pid)
    try:
        age = (time.time() if now is None else now) - newest_mtime(path)
    except FileNotFoundError:
        return False  # its owner just published or removed it
    return age > FOREIGN_STALE_AFTER_S


def remove_path(path: Path) -> None:
    """Delete a file or folder; gone already is fine (another process may clean up too)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging files and folders of dead processes directly under ``parent``."""
    if not parent.is_dir():
        return []
    stale = [path for path in sorted(parent.iterdir()) if is_stale(path)]
    for path in stale:
        remove_path(path)
    if stale:
        rank_zero_info(f"Removed {len(stale)} staging leftover(s) of killed processes in {parent}: "
                       + ", ".join(p.name for p in stale))
    return stale


def discard(path: Path) -> None:
    """Move ``path`` out of the way atomically, then delete it (readers never see it half-deleted)."""
    doomed = staging_path(path)
    try:
        path.rename(doomed)
    except FileNotFoundError:
        return
    remove_path(doomed)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file under a private name, flush it, rename it into place."""
    staging = staging_path(path)
    try:
        with open(staging, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def _holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    return text or "another process"


def _lock(fd: int, path: Path, what: str) -> bool:
    """Take the lock, waiting (with one line saying for whom) if it is held; False if unsupported."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            rank_zero_info(f"Waiting for {_holder(fd)} to finish {what} ({path} is locked)")
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise
        if str(path.parent) not in _warned_no_locks:
            _warned_no_locks.add(str(path.parent))
            warnings.warn(f"{path.parent} does not support file locks ({error.strerror}); {what} goes on "
                          "without one: files stay whole, but parallel runs may repeat the work",
                          stacklevel=3)
        return False
    return True


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed, never deleted) for the block.

    The lock file is kept: deleting it would let a waiter and a newcomer lock two different
    files. The kernel releases the lock when its holder exits, even when killed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if _lock(fd, path, what):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
