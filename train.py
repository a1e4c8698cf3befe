"""Train, then test the best checkpoint: ``python train.py --config <yaml> [--config ...]``.

A LightningCLI without subcommands: configs compose left to right, dotted
flags override single keys (``--model.learning_rate 3e-4``), ``--print_config``
prints the resolved config, ``--ckpt_path`` resumes a run. The DataModule's
vocabulary size, maximum length, padding id, label count and [CLS] choice are
linked into the model (``src/cli.py``: ``DATA_LINKS``), so configs never repeat them,
and a link whose target the model lacks is an error instead of a silent default.
Every callback of a run is a top-level section of the config (``RUN_CALLBACKS``).
Runs log to ``logs/<task>/<attention>/version_N`` (``--trainer.default_root_dir DIR``:
``DIR/<task>/<attention>/version_N``). ``last.ckpt`` holds the newest state (every
validation, every ``--last_checkpoint.every_n_train_steps``, the end of fit, SIGTERM/SIGINT);
``--ckpt_path last`` resumes from the newest one of the task/attention folder, ``--ckpt_path auto``
the same or, without one, starts a new run; a larger ``max_steps`` extends a finished run.
See docs/robustness.md for DDP, resuming and the answers to bad input.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.callbacks.last_checkpoint import LastCheckpoint, agreed_signal
from src.checkpoint_io import CheckpointWriteError, use_atomic_checkpoints
from src.checkpoints import check_resume_checkpoint, resolve_ckpt_path
from src.cli import LOG_ROOT, TrainCLI
from src.signals import STOP, StoppedBySignal, end_at_next_signal, resume_command, signal_name

CHILD_EXIT_WAIT_S = 120  # after a stop, how long DDP rank 0 waits for the ranks it launched

DEFAULT_TRAINER = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # no hp_metric placeholder: the model declares <monitor>_best as the HPARAMS tab's metric
        "init_args": {"save_dir": LOG_ROOT, "name": "default", "default_hp_metric": False},
    },
}


def quiet_known_upstream_noise() -> None:
    """Silence what installed libraries print that a user of this script cannot act on.

    Lightning 2.6 builds torch's deprecated ``LeafSpec`` (torch >= 2.10 warns about it on
    every dataloader combination), and its log carries advertisements ("💡 Tip: ... litlogger").
    """
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip"))


def main(args: list[str] | None = None) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the test metrics. ``args``: instead of ``sys.argv``."""
    if not (sys.argv[1:] if args is None else args):
        raise SystemExit(
            "usage: python train.py --config <yaml> [--config <yaml> ...] [--section.key value ...]\n"
            "e.g.   python train.py --config configs/quickstart.yaml   (see --help and configs/)"
        )
    quiet_known_upstream_noise()
    STOP.install()  # SIGTERM/SIGINT: save at the next step boundary, exit 143/130 (src/signals.py)
    argv = [sys.argv[0], *(sys.argv[1:] if args is None else args)]
    cli: TrainCLI | None = None
    try:
        cli = build_cli(args)
        metrics = fit_and_test(cli)
    except (StoppedBySignal, SIGTERMException) as stop:
        exit_stopped(stop, cli.trainer if cli is not None else None, argv)
    except CheckpointWriteError as error:  # a full disk: one line, the previous checkpoint is intact
        raise SystemExit(f"error: {error}") from None
    finally:
        STOP.uninstall()
    if not cli.trainer.interrupted:  # after a crash another rank may be gone: no barrier
        leave_process_group()
    return metrics


def build_cli(args: list[str] | None) -> TrainCLI:
    """Parse the configs, build model, data and trainer; checkpoints are written atomically."""
    cli = TrainCLI(
        auto_configure_optimizers=False,  # the modules build their own optimizer and schedule
        save_config_kwargs={"overwrite": True},
        trainer_defaults=DEFAULT_TRAINER,
        run=False,
        args=args,
        parser_kwargs={"description": __doc__},
    )
    # After the trainer exists: Lightning's default TorchCheckpointIO (also the one a config's
    # trainer.plugins leaves in place) becomes AtomicCheckpointIO; a CheckpointIO the config
    # names itself is kept (src/checkpoint_io.py).
    use_atomic_checkpoints(cli.trainer)
    cli.check_data_links()
    return cli


def fit_and_test(cli: TrainCLI) -> dict[str, float]:
    """Fit (resuming from ``--ckpt_path``), then test and predict with the best checkpoint."""
    trainer = cli.trainer
    ckpt_path = resolve_ckpt_path(cli.config.ckpt_path, trainer)
    if ckpt_path is not None:
        try:
            check_resume_checkpoint(ckpt_path, cli.model)
        except ValueError as error:
            raise SystemExit(f"error: --ckpt_path: {error}") from None
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    signum = agreed_signal(trainer)  # one that came during the last steps; fit has saved the end
    if signum:
        raise StoppedBySignal(signum, trainer.global_step, last_saved(trainer))
    if not cli.config.run_test or trainer.interrupted:
        return {}
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    # No validation ran (a run shorter than val_check_interval): there is no best checkpoint,
    # so test the weights fit ended with, and say so.
    source = (f"best checkpoint {Path(best).name}" if best
              else "final weights: no validation ran, so there is no best checkpoint")
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, weights_only=True)
    metrics = {k: v for result in results for k, v in result.items()}  # several dev sets (MNLI m/mm)
    if writes_predictions(cli.model):
        trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, weights_only=True)
    log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not only rank 0
    if trainer.is_global_zero:
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items())
        print(f"Test ({source}): {shown}", flush=True)
        log_root = getattr(trainer.logger, "save_dir", None) or LOG_ROOT
        print(f"Logs and checkpoints: {log_dir}  (tensorboard --logdir {log_root})", flush=True)
    return metrics


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


def writes_predictions(model: Any) -> bool:
    """Tasks with a ``predict_step`` (e.g. GLUE's leaderboard files) predict after testing."""
    return type(model).predict_step is not LightningModule.predict_step


def leave_process_group() -> None:
    """Under DDP, wait for every rank, then close the process group before exiting.

    Otherwise each rank tears gloo down in its own ``atexit`` handler, one after the
    other; once in CI a 2-rank CPU run that had tested and printed its results still
    aborted at exit ("terminate called without an active exception", exit -6).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
