"""Train, then test the best checkpoint: ``python train.py --config <yaml> [--config ...]``.

A LightningCLI without subcommands: configs compose left to right, dotted
flags override single keys (``--model.learning_rate 3e-4``), ``--print_config``
prints the resolved config, ``--ckpt_path`` resumes a run. The DataModule's
vocabulary size, maximum length, padding id, label count and [CLS] choice are
linked into the model (``DATA_LINKS``), so configs never repeat them, and a
link whose target the model lacks is an error instead of a silent default.
Runs log to ``logs/<task>/<attention>/version_N`` (``--trainer.default_root_dir DIR``:
``DIR/<task>/<attention>/version_N``). ``last.ckpt`` holds the newest state (every
validation, every ``--last_checkpoint.every_n_train_steps``, the end of fit, SIGTERM);
``--ckpt_path last`` resumes from the newest one of the task/attention folder.
See docs/robustness.md for DDP, resuming and the answers to bad input.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from jsonargparse._util import import_object
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.callbacks.finite_loss import FiniteLossCheck
from src.callbacks.last_checkpoint import LastCheckpoint
from src.callbacks.resource_monitor import ResourceMonitor
from src.callbacks.seeding import BatchSeeds
from src.checkpoints import check_resume_checkpoint
from src.cli_errors import explain

LOG_ROOT = "logs"  # the configs' logger save_dir; --trainer.default_root_dir replaces it
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a scheduler expects from a pre-empted job

DEFAULT_TRAINER = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": LOG_ROOT, "name": "default"},
    },
}


ENCODER = "model.init_args.encoder.init_args"
DATA_LINKS: tuple[tuple[str, str], ...] = (
    # (DataModule attribute, model argument it sets); a None value means "not used by this task"
    ("vocab_size", f"{ENCODER}.vocab_size"),
    ("max_length", f"{ENCODER}.max_length"),
    ("pad_id", f"{ENCODER}.padding_id"),
    ("num_classes", "model.init_args.num_classes"),
    ("pooling", "model.init_args.pooling"),
    ("task", "model.init_args.task"),  # GLUE: the task named once, in the data
)
PARSE_LINKS: tuple[tuple[str, str], ...] = (
    # (source, target) copied when the config is parsed; skipped where the data class lacks the target.
    # GLUE: the pre-trained checkpoint is named once (model.init_from) and its tokenizer reaches the data.
    ("model.init_args.init_from", "data.init_args.tokenizer_from"),
)


def _data_attribute(name: str):
    def compute(data: object) -> Any:
        return getattr(data, name, None)
    compute.__name__ = f"data_{name}"
    return compute


class TrainArgumentParser(LightningArgumentParser):
    """Puts a one-line answer (unknown key/class, closest valid names) in front of parse errors."""

    def error(self, message: str, ex: Exception | None = None):  # noqa: ANN201 (NoReturn upstream)
        return super().error(explain(message), ex)


class TrainCLI(LightningCLI):
    """LightningCLI with the data->model links, checkpoint defaults and a ``--ckpt_path`` flag."""

    def __init__(self, *args: Any, parser_class: type = TrainArgumentParser, **kwargs: Any) -> None:
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume training from (e.g. .../checkpoints/last.ckpt), "
                                 "or 'last': the newest last.ckpt of this task/attention log folder")
        parser.add_argument("--extends", type=str | None, default=None,
                            help="(in a config file) the config it builds on, relative to it; "
                                 "train.py composes that one first")
        parser.add_argument("--run_test", type=bool, default=True,
                            help="after fitting, test the best checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": None,  # None: the model's own `monitor` (e.g. val/acc, max)
            "checkpoint.save_last": True,
            "checkpoint.auto_insert_metric_name": False,
            # LastCheckpoint also writes last.ckpt; without this, ModelCheckpoint would then
            # write last-v1.ckpt next to it instead of replacing it.
            "checkpoint.enable_version_counter": False,
        })
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        for attribute, target in DATA_LINKS:
            parser.link_arguments("data", target, compute_fn=_data_attribute(attribute),
                                  apply_on="instantiate")
        for source, target in PARSE_LINKS:
            parser.link_arguments(source, target)

    def before_instantiate_classes(self) -> None:
        """Fill the checkpoint's monitor from the model class, name the log folder by attention,
        and note which data links the model cannot take (checked once the data exists)."""
        config = self.config
        model_class = import_object(config.model.class_path)
        monitor, mode = getattr(model_class, "monitor", ("val/loss", "min"))
        if config.checkpoint.monitor is None:
            config.checkpoint.monitor = monitor
            config.checkpoint.mode = mode
        if config.checkpoint.filename is None and config.checkpoint.monitor:
            short = config.checkpoint.monitor.split("/")[-1]
            config.checkpoint.filename = f"best-step{{step}}-{short}{{{config.checkpoint.monitor}:.4f}}"
        _follow_default_root_dir(config)
        encoder = config.model.init_args.get("encoder")
        attention = encoder.init_args.get("attention") if isinstance(encoder, Namespace) else None
        logger = config.trainer.get("logger")
        if isinstance(logger, Namespace) and logger.class_path.endswith("TensorBoardLogger") and attention:
            logger.init_args.name = f"{logger.init_args.name or 'default'}/{attention_label(attention)}"
        self._unlinkable = [
            (attribute, target) for attribute, target in DATA_LINKS
            if not _accepts(config, target)
        ]

    def check_data_links(self) -> None:
        """A link the data fills but the model cannot take must fail loudly, not fall to a default."""
        for attribute, target in getattr(self, "_unlinkable", []):
            value = getattr(self.datamodule, attribute, None)
            if value is None or (attribute == "pooling" and value == "mean"):
                continue
            raise SystemExit(
                f"error: {type(self.datamodule).__name__}.{attribute} = {value!r} is linked into "
                f"'{target}', but that argument does not exist in the model config. Name the "
                f"argument '{target.rsplit('.', 1)[-1]}' in the model class (train.py DATA_LINKS), "
                "or use a DataModule that does not provide it."
            )


def _follow_default_root_dir(config: Namespace) -> None:
    """``--trainer.default_root_dir DIR`` moves the TensorBoard logs (hence config, checkpoints, predictions).

    Precedence: a logger ``save_dir`` other than the configs' ``logs`` was set on
    purpose and wins only if it is inside DIR; one outside DIR is an error rather
    than a silently ignored flag.
    """
    root = config.trainer.get("default_root_dir")
    logger = config.trainer.get("logger")
    if not root or not isinstance(logger, Namespace) or not logger.class_path.endswith("TensorBoardLogger"):
        return
    save_dir = logger.init_args.get("save_dir")
    if save_dir in (None, LOG_ROOT):
        logger.init_args.save_dir = str(root)
    elif not Path(save_dir).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(
            f"error: --trainer.default_root_dir={root} and the logger's save_dir={save_dir} disagree: "
            "logs, config, checkpoints and predictions go under the logger's save_dir. Give only "
            "default_root_dir (save_dir then follows it), or a save_dir inside it."
        )


def _accepts(config: Namespace, target: str) -> bool:
    """Whether the class configured above ``target`` has an ``__init__`` argument of that name."""
    owner, argument = target.rsplit(".init_args.", 1)
    node = config.get(owner)
    if not isinstance(node, Namespace) or "class_path" not in node:
        return False
    names: set[str] = set()
    # Follow **kwargs up to the parents, as jsonargparse does.
    for klass in import_object(node.class_path).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        names |= set(parameters)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return argument in names


def attention_label(attention: Namespace) -> str:
    """Short folder name of an attention config: yoso_16, yoso_c_32, yoso_e, softmax, nystrom, ..."""
    name = attention.class_path.rsplit(".", 1)[-1]
    args = attention.get("init_args") or Namespace()
    if name == "YOSOAttention":
        if args.get("expectation"):
            return "yoso_e"
        conv = "_c" if args.get("conv_window") else ""
        return f"yoso{conv}_{args.get('num_hashes')}"
    return name.removesuffix("Attention").lower() or name.lower()


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
        args=expand_extends(argv),
        parser_kwargs={"description": __doc__},
    )
    cli.check_data_links()
    _check_callbacks(cli)
    metrics = _fit_and_test(cli)
    if not cli.trainer.interrupted:  # after Ctrl+C another rank may be gone: no barrier
        _leave_process_group()
    return metrics


def _fit_and_test(cli: TrainCLI) -> dict[str, float]:
    config = cli.config
    trainer = cli.trainer
    ckpt_path = resolve_ckpt_path(config.ckpt_path, trainer)
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
    if not config.run_test or trainer.interrupted:
        return {}
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    # No validation ran (a run shorter than val_check_interval): there is no best checkpoint,
    # so test the weights fit ended with, and say so.
    source = (f"best checkpoint {Path(best).name}" if best
              else "final weights: no validation ran, so there is no best checkpoint")
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, weights_only=True)
    # Several dev sets (MNLI m/mm); hp_metric is the best validation value, not a test result.
    metrics = {k: v for result in results for k, v in result.items() if k != "hp_metric"}
    if writes_predictions(cli.model):
        trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, weights_only=True)
    log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not only rank 0
    if trainer.is_global_zero:
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items())
        print(f"Test ({source}): {shown}", flush=True)
        print(f"Logs and checkpoints: {log_dir}  (tensorboard --logdir {_log_root(cli)})", flush=True)
    return metrics


def _leave_process_group() -> None:
    """Under DDP, wait for every rank, then close the process group before exiting.

    Otherwise each rank tears gloo down in its own ``atexit`` handler, one after the
    other; once in CI a 2-rank CPU run that had tested and printed its results still
    aborted at exit ("terminate called without an active exception", exit -6).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def resolve_ckpt_path(ckpt_path: str | None, trainer: Any) -> str | None:
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


def writes_predictions(model: object) -> bool:
    """Tasks with a ``predict_step`` (e.g. GLUE's leaderboard files) predict after testing."""
    return type(model).predict_step is not LightningModule.predict_step


def expand_extends(argv: list[str]) -> list[str]:
    """Put ``--config BASE`` before every ``--config FILE`` whose YAML says ``extends: BASE``.

    A file then states only what differs from its base (the quickstart from the
    ListOps task). jsonargparse's own nested ``config:`` key cannot merge
    ``class_path`` sections, hence this small step.
    """
    expanded: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            expanded += _with_bases(argv[i + 1])
            i += 2
            continue
        expanded += _with_bases(arg.split("=", 1)[1]) if arg.startswith("--config=") else [arg]
        i += 1
    return expanded


def _with_bases(config: str) -> list[str]:
    return [part for path in _config_chain(Path(config)) for part in ("--config", str(path))]


def _config_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    if not path.is_file():
        return [path]  # jsonargparse reports the missing file
    if path.resolve() in seen:
        raise SystemExit(f"error: configs extend each other in a cycle: {' -> '.join(map(str, seen))}")
    content = yaml.safe_load(path.read_text()) or {}
    base = content.get("extends") if isinstance(content, dict) else None
    if not base:
        return [path]
    return [*_config_chain(path.parent / base, (*seen, path.resolve())), path]


def _check_callbacks(cli: TrainCLI) -> None:
    """Keep one LearningRateMonitor and one ResourceMonitor (time and peak memory for the LRA
    table) even when a config replaces the callback list; add the per-batch seeding and the
    finite-loss check first, so a NaN step raises before any checkpoint callback can save it."""
    callbacks = cli.trainer.callbacks
    if not any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if not any(isinstance(cb, ResourceMonitor) for cb in callbacks):
        callbacks.append(ResourceMonitor())
    if not any(isinstance(cb, FiniteLossCheck) for cb in callbacks):
        callbacks.insert(0, FiniteLossCheck())
    if not any(isinstance(cb, BatchSeeds) for cb in callbacks):
        callbacks.insert(0, BatchSeeds())


def _log_root(cli: TrainCLI) -> str:
    logger = cli.trainer.logger
    return str(getattr(logger, "save_dir", None) or LOG_ROOT)


if __name__ == "__main__":
    main()
