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
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.callbacks.last_checkpoint import agreed_signal
from src.checkpoint_io import CheckpointWriteError, use_atomic_checkpoints
from src.checkpoints import check_resume_checkpoint, resolve_ckpt_path
from src.cli import LOG_ROOT, TrainCLI, check_compaction
from src.signals import STOP, StoppedBySignal
from src.stopping import exit_stopped, last_saved, leave_process_group

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
    check_compaction(cli.datamodule, cli.model)
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


def writes_predictions(model: Any) -> bool:
    """Tasks with a ``predict_step`` (e.g. GLUE's leaderboard files) predict after testing."""
    return type(model).predict_step is not LightningModule.predict_step


if __name__ == "__main__":
    main()
