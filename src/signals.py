"""Stop a run on SIGTERM or SIGINT at a step boundary, so its state can be saved whole.

``train.py`` installs ``STOP`` for the whole run. While training, a signal is only
recorded: ``LastCheckpoint`` checks for it after every optimizer step (all ranks
agree under DDP), writes ``last.ckpt`` of that step and stops the run with
``StoppedBySignal``. Outside training (setup, data preparation, testing) there is
nothing half-done to save, so the signal stops the run at once. A second Ctrl+C
during training also stops at once, without saving.

DataLoader workers ignore both signals (``worker_init``): ``kill -- -PGID`` (what
``timeout`` and SLURM send) reaches them too, and a worker that died on it made
the main process fail with "DataLoader worker ... is killed by signal" before it
could save. The main process shuts its workers down itself.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from types import FrameType
from typing import Any

from lightning.fabric.utilities.seed import pl_worker_init_function

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(Exception):
    """The run stopped because of ``signum``; ``checkpoint``: what was saved for it (None: nothing)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None) -> None:
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


class StopSignals:
    """The process's SIGTERM/SIGINT handler: records a signal while training, raises otherwise."""

    def __init__(self) -> None:
        self.pending: int | None = None  # the signal received while deferring, if any
        self.deferring = False
        self._installed = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGTERM and SIGINT in this process (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._installed:
            self._previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            self.pending, self.deferring = None, False
        self._set_handlers()
        self._installed = True

    def uninstall(self) -> None:
        """Give the signals back to the handlers from before ``install`` (``train.main`` run in-process)."""
        if self._installed and threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._installed = False
        self.deferring = False

    def _set_handlers(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def take_over(self) -> None:
        """Re-install after Lightning registered its own SIGTERM handler for a stage.

        Lightning's handler broadcasts from inside the signal handler under DDP, which
        can pair with another rank's unrelated collective; this handler only records.
        A no-op unless ``install`` ran (a library user's handlers are left alone).
        """
        if self._installed and threading.current_thread() is threading.main_thread():
            self._set_handlers()

    def defer(self, on: bool) -> None:
        """While on (training), only record signals; a step boundary acts on them."""
        self.deferring = on

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        forced = signum == signal.SIGINT and self.pending == signal.SIGINT  # Ctrl+C twice: stop now
        if self.deferring and not forced:
            self.pending = max(self.pending or 0, signum)  # SIGTERM wins over SIGINT
            return
        self.deferring = False
        raise StoppedBySignal(signum)


STOP = StopSignals()


def end_at_next_signal() -> None:
    """While a stop is being finished (reported, ranks awaited), a further signal ends the process at once."""
    STOP.uninstall()
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: ignore SIGTERM/SIGINT, so only the main process reacts.

    Keeps Lightning's worker seeding, which it adds only when no ``worker_init_fn`` is set.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)


def resume_command(argv: list[str], checkpoint: str | None) -> str:
    """The command line that continues this run: ``argv`` with ``--ckpt_path <checkpoint>``."""
    args = without_option(argv[1:], "--ckpt_path")
    if checkpoint:
        args += ["--ckpt_path", checkpoint]
    return shlex.join(["python", argv[0], *args])


def without_option(args: list[str], option: str) -> list[str]:
    """``args`` less every ``option value`` / ``option=value``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept
