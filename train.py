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
validation, every ``--last_checkpoint.every_n_train_steps``, the end of fit, SIGTERM);
``--ckpt_path last`` resumes from the newest one of the task/attention folder.
See docs/robustness.md for DDP, resuming and the answers to bad input.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.callbacks.last_checkpoint import LastCheckpoint
from src.checkpoints import check_resume_checkpoint
from src.cli import LOG_ROOT, TrainCLI

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a scheduler expects from a pre-empted job

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
    cli = TrainCLI(
        auto_configure_optimizers=False,  # the modules build their own optimizer and schedule
        save_config_kwargs={"overwrite": True},
        trainer_defaults=DEFAULT_TRAINER,
        run=False,
        args=args,
        parser_kwargs={"description": __doc__},
    )
    cli.check_data_links()
    metrics = fit_and_test(cli)
    if not cli.trainer.interrupted:  # after Ctrl+C another rank may be gone: no barrier
        leave_process_group()
    return metrics


def fit_and_test(cli: TrainCLI) -> dict[str, float]:
    """Fit (resuming from ``--ckpt_path``), then test and predict with the best checkpoint."""
    trainer = cli.trainer
    ckpt_path = resolve_ckpt_path(cli.config.ckpt_path, trainer)
    if ckpt_path is not None:
        try:
            check_resume_checkpoint(ckpt_path, cli.model)
        except ValueError as error:
            raise SystemExit(f"error: --ckpt_path: {error}") from None
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        saved = next((cb.saved_on_sigterm for cb in trainer.callbacks
                      if isinstance(cb, LastCheckpoint)), None)
        if trainer.is_global_zero:
            print(f"Stopped by SIGTERM at step {trainer.global_step}; saved {saved or 'no checkpoint'}. "
                  f"Resume with --ckpt_path {saved or 'last'}", file=sys.stderr, flush=True)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
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


def resolve_ckpt_path(ckpt_path: str | None, trainer: Trainer) -> str | None:
    """``last``: the newest ``last.ckpt`` in any version folder of this run's ``<save_dir>/<name>``.

    (Lightning's own ``"last"`` looks only in the new run's version folder, which is empty.)
    Any other value must be an existing file; Lightning then reports a file that is not a
    checkpoint or does not fit the model (naming the keys).
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        logger = trainer.logger
        root = Path(logger.save_dir) / logger.name if logger is not None else Path(trainer.default_root_dir)
        found = sorted(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit(f"error: --ckpt_path last: no last.ckpt under {root}; "
                             "pass the checkpoint file instead")
        return str(found[-1])
    if not Path(ckpt_path).is_file():
        raise SystemExit(f"error: --ckpt_path {ckpt_path} does not exist (or is not a file)")
    return ckpt_path


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
