"""How a run ends after SIGTERM/SIGINT, and how DDP ranks part: exit code, message, process group.

``train.py`` calls ``exit_stopped`` when a signal stopped fit, and
``leave_process_group`` after a normal end; the signal handling itself is in
``src/signals.py`` and ``src/callbacks/last_checkpoint.py``.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from typing import NoReturn

import torch
from lightning.pytorch import Trainer

from src.callbacks.last_checkpoint import LastCheckpoint
from src.signals import StoppedBySignal, end_at_next_signal, resume_command, signal_name

CHILD_EXIT_WAIT_S = 120  # after a stop, how long DDP rank 0 waits for the ranks it launched


def last_saved(trainer: Trainer | None) -> str | None:
    """The newest ``last.ckpt`` this run wrote (None: none yet)."""
    callbacks = trainer.callbacks if trainer is not None else []
    return next((cb.last_saved for cb in callbacks if isinstance(cb, LastCheckpoint)), None)


def exit_stopped(stop: BaseException, trainer: Trainer | None, argv: list[str]) -> NoReturn:
    """Exit 128 + signal after SIGTERM/SIGINT, printing the exact command that continues the run.

    A stop at a step boundary (``StoppedBySignal`` with a step) was agreed by every rank,
    so they can still meet to close the process group; any other stop may have left
    ranks mid-collective, so the ranks this one launched are killed instead.
    """
    end_at_next_signal()
    signum = stop.signum if isinstance(stop, StoppedBySignal) else signal.SIGTERM
    agreed = isinstance(stop, StoppedBySignal) and stop.step is not None
    saved = stop.checkpoint if isinstance(stop, StoppedBySignal) and stop.checkpoint else last_saved(trainer)
    children = detach_launched_ranks(trainer)
    if agreed:
        leave_process_group()
    if trainer is None or trainer.is_global_zero:
        print(stop_message(signal_name(signum), trainer, saved, argv), file=sys.stderr, flush=True)
    for child in children:
        if not agreed:
            child.kill()
        try:
            child.wait(timeout=CHILD_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
    raise SystemExit(128 + signum)  # 143 / 130: what a shell and a scheduler expect after the signal


def stop_message(name: str, trainer: Trainer | None, saved: str | None, argv: list[str]) -> str:
    """``Stopped by SIGTERM at step N; saved <path>. Resume with:`` and the command line."""
    where = f" at step {trainer.global_step}" if trainer is not None else ""
    if saved:
        return f"Stopped by {name}{where}; saved {saved}. Resume with:\n  {resume_command(argv, saved)}"
    return (f"Stopped by {name}{where}; nothing was saved in this run. Start it again with:\n  "
            f"{shlex.join(['python', *argv])}")


def detach_launched_ranks(trainer: Trainer | None) -> list[subprocess.Popen]:
    """The DDP ranks Lightning started from this process, no longer watched by its observer thread.

    The observer SIGKILLs this process as soon as one of them exits non-zero, which
    each does after a stop (143/130); it shares ``launcher.procs``, so emptying the
    list ends its watch, and this process waits for them itself.
    """
    launcher = getattr(trainer.strategy, "launcher", None) if trainer is not None else None
    procs = getattr(launcher, "procs", None)
    if not isinstance(procs, list):
        return []
    children = list(procs)
    procs.clear()
    return children


def leave_process_group() -> None:
    """Under DDP, wait for every rank, then close the process group before exiting.

    Otherwise each rank tears gloo down in its own ``atexit`` handler, one after the
    other; once in CI a 2-rank CPU run that had tested and printed its results still
    aborted at exit ("terminate called without an active exception", exit -6).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
