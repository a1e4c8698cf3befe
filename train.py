"""Train, then test the best checkpoint: ``python train.py --config <yaml> [--config ...]``.

A LightningCLI without subcommands: configs compose left to right, dotted
flags override single keys (``--model.learning_rate 3e-4``), ``--print_config``
prints the resolved config, ``--ckpt_path`` resumes a run. The DataModule's
vocabulary size, label count and maximum length are linked into the model, so
configs never repeat them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

DEFAULT_TRAINER = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "default"},
    },
}


class TrainCLI(LightningCLI):
    """LightningCLI with our links, checkpoint defaults and a ``--ckpt_path`` flag."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume training from (e.g. .../checkpoints/last.ckpt)")
        parser.add_argument("--run_test", type=bool, default=True,
                            help="after fitting, test the best checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-step{step}-acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        encoder = "model.init_args.encoder.init_args"
        parser.link_arguments("data", f"{encoder}.vocab_size", compute_fn=_vocab_size, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=_num_classes,
                              apply_on="instantiate")
        parser.link_arguments("data.init_args.max_length", f"{encoder}.max_length")


def _vocab_size(data: object) -> int:
    return data.vocab_size


def _num_classes(data: object) -> int:
    return data.num_classes


def main(args: list[str] | None = None) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the test metrics."""
    argv = sys.argv[1:] if args is None else args
    if not argv:
        raise SystemExit(
            "usage: python train.py --config <yaml> [--config <yaml> ...] [--section.key value ...]\n"
            "e.g.   python train.py --config configs/quickstart.yaml   (see --help and configs/)"
        )
    cli = TrainCLI(
        auto_configure_optimizers=False,  # the modules build their own optimizer and schedule
        save_config_kwargs={"overwrite": True},
        trainer_defaults=DEFAULT_TRAINER,
        run=False,
        args=args,
        parser_kwargs={"description": __doc__},
    )
    _check_callbacks(cli)
    config = cli.config
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path)
    if not config.run_test or cli.trainer.interrupted:
        return {}
    checkpoint = cli.trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    results = cli.trainer.test(datamodule=cli.datamodule, ckpt_path=best or None, weights_only=True)
    metrics = results[0] if results else {}
    if cli.trainer.is_global_zero:
        source = f"best checkpoint {Path(best).name}" if best else "final weights"
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items())
        print(f"Test ({source}): {shown}", flush=True)
        print(f"Logs and checkpoints: {cli.trainer.log_dir}  (tensorboard --logdir {_log_root(cli)})")
    return metrics


def _check_callbacks(cli: TrainCLI) -> None:
    """Keep one LearningRateMonitor even when a config replaces the callback list."""
    if not any(isinstance(cb, LearningRateMonitor) for cb in cli.trainer.callbacks):
        cli.trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))


def _log_root(cli: TrainCLI) -> str:
    logger = cli.trainer.logger
    return str(getattr(logger, "save_dir", None) or "logs")


if __name__ == "__main__":
    main()
