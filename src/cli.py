"""train.py's LightningCLI: the callbacks every run has, the data->model links, the log folder.

Every callback of a run is a section of the CLI (``RUN_CALLBACKS``), so the saved
``config.yaml`` names each one with its arguments, a flag changes it
(``--last_checkpoint.every_n_train_steps 100``) and a config that replaces
``trainer.callbacks`` cannot drop it. Lightning appends them after the config's
``trainer.callbacks`` and moves ``ModelCheckpoint`` last: seeding and the finite-loss
check run before ``LastCheckpoint`` and ``ModelCheckpoint``, so a NaN step raises
before anything saves it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from src.callbacks.finite_loss import FiniteLossCheck
from src.callbacks.last_checkpoint import LastCheckpoint
from src.callbacks.resource_monitor import ResourceMonitor
from src.callbacks.seeding import BatchSeeds
from src.callbacks.throughput import TokenThroughput
from src.cli_errors import check_values, explain, fail, import_class, init_arguments
from src.extends import expand_extends
from src.kernels.backends import check_backend_choice
from src.models.components.encoder import TransformerEncoder, compaction_refusal
from src.pretrained import apply_source, link_segments

LOG_ROOT = "logs"  # the configs' logger save_dir; --trainer.default_root_dir replaces it

RUN_CALLBACKS: tuple[tuple[str, type[Callback], dict[str, Any]], ...] = (
    # (config section, class, defaults); a subclass may replace the class (--checkpoint.class_path ...)
    ("batch_seeds", BatchSeeds, {}),  # per-rank, per-batch random streams (docs/robustness.md)
    ("finite_loss", FiniteLossCheck, {}),
    ("lr_monitor", LearningRateMonitor, {"logging_interval": "step"}),
    ("resources", ResourceMonitor, {}),  # training time and peak memory for the LRA table
    ("throughput", TokenThroughput, {}),
    ("checkpoint", ModelCheckpoint, {
        "monitor": None,  # None: the model's own `monitor` (e.g. val/acc, max)
        "save_last": True,
        "auto_insert_metric_name": False,
        # LastCheckpoint also writes last.ckpt; without this, ModelCheckpoint would then
        # write last-v1.ckpt next to it instead of replacing it.
        "enable_version_counter": False,
    }),
    ("last_checkpoint", LastCheckpoint, {}),
)

ENCODER = "model.init_args.encoder.init_args"
DATA_LINKS: tuple[tuple[str, str], ...] = (
    # (DataModule attribute, model argument it sets); a None value means "not used by this task"
    ("vocab_size", f"{ENCODER}.vocab_size"),
    ("encoder_length", f"{ENCODER}.max_length"),  # max_length, or the LRA harness's fixed pad_to
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


class TrainArgumentParser(LightningArgumentParser):
    """Puts a one-line answer (unknown key/class, closest valid names) in front of parse errors."""

    def error(self, message: str, ex: Exception | None = None):  # noqa: ANN201 (NoReturn upstream)
        return super().error(explain(message), ex)


class TrainCLI(LightningCLI):
    """LightningCLI with the run's callbacks, the data->model links, ``extends`` and ``--ckpt_path``."""

    def __init__(self, *args: Any, parser_class: type = TrainArgumentParser, **kwargs: Any) -> None:
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume training from (e.g. .../checkpoints/last.ckpt), "
                                 "or 'last': the newest last.ckpt of this task/attention log folder, "
                                 "or 'auto': that one if it exists, else start a new run")
        parser.add_argument("--extends", type=str | None, default=None,
                            help="(in a config file) the config it builds on, relative to it; "
                                 "train.py composes that one first")
        parser.add_argument("--run_test", type=bool, default=True,
                            help="after fitting, test the best checkpoint")
        for section, callback, defaults in RUN_CALLBACKS:
            parser.add_lightning_class_args(callback, section, subclass_mode=True)
            class_path = f"{callback.__module__}.{callback.__qualname__}"
            parser.set_defaults({section: {"class_path": class_path, "init_args": defaults}})
        for attribute, target in DATA_LINKS:
            parser.link_arguments("data", target, compute_fn=_data_attribute(attribute),
                                  apply_on="instantiate")
        for source, target in PARSE_LINKS:
            parser.link_arguments(source, target)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` (default: the command line) after expanding each config's ``extends``."""
        argv = list(sys.argv[1:] if args is None else args)
        print_flags = [arg for arg in argv if arg.split("=", 1)[0] == "--print_config"]
        if print_flags:
            self._print_with_source(parser, [arg for arg in argv if arg not in print_flags], print_flags[-1])
        self.config = parser.parse_args(expand_extends(argv))
        # The bases are merged in now: the saved config.yaml is whole and must not name a
        # base relative to a folder it no longer sits in (it could not be run again).
        self.config.extends = None
        check_config(self.config)

    @staticmethod
    def _print_with_source(parser: LightningArgumentParser, argv: list[str], flag: str) -> None:
        """``--print_config`` of a run with ``init_from``: the config as it will run, i.e. with the
        source's encoder and length filled in (jsonargparse alone prints it before they are).
        Without ``init_from`` this returns and jsonargparse prints as usual."""
        config = parser.parse_args(expand_extends(argv))
        if not config.get("model.init_args.init_from"):
            return
        config.extends = None
        apply_source(config)
        link_segments(config)
        flags = {name for name in flag.partition("=")[2].split(",") if name}
        sys.stdout.write(parser.dump(config, skip_unset="skip_unset" in flags or "skip_null" in flags,
                                     skip_default="skip_default" in flags, skip_validation=True))
        sys.exit(0)

    def before_instantiate_classes(self) -> None:
        """Take ``init_from``'s encoder and length (``src.pretrained``), fill the checkpoint's monitor
        from the model class, name the log folder by attention, and note which data links the
        model cannot take (checked once the data exists)."""
        config = self.config
        if apply_source(config) is not None:
            check_config(config)  # the values the source brought in, checked as a config's are
        link_segments(config)
        monitor, mode = getattr(import_class(config.model.class_path), "monitor", ("val/loss", "min"))
        checkpoint = config.checkpoint.init_args
        if checkpoint.get("monitor", "") is None:
            checkpoint.monitor, checkpoint.mode = monitor, mode
        if checkpoint.get("filename") is None and checkpoint.get("monitor"):
            short = checkpoint.monitor.split("/")[-1]
            checkpoint.filename = f"best-step{{step}}-{short}{{{checkpoint.monitor}:.4f}}"
        follow_default_root_dir(config)
        encoder = config.model.init_args.get("encoder")
        attention = encoder.init_args.get("attention") if isinstance(encoder, Namespace) else None
        logger = config.trainer.get("logger")
        if isinstance(logger, Namespace) and logger.class_path.endswith("TensorBoardLogger") and attention:
            logger.init_args.name = f"{logger.init_args.name or 'default'}/{attention_label(attention)}"
        self._unlinkable = [(attribute, target) for attribute, target in DATA_LINKS
                            if not _accepts(config, target)]

    def check_data_links(self) -> None:
        """A link the data fills but the model cannot take must fail loudly, not fall to a default.

        One it may ignore (a None value, mean pooling) is also dropped from the model's
        hyper-parameters, where Lightning records every applied link: a checkpoint must
        rebuild the model with the arguments it really takes (``load_from_checkpoint``).
        """
        for attribute, target in getattr(self, "_unlinkable", []):
            value = getattr(self.datamodule, attribute, None)
            if value is None or (attribute == "pooling" and value == "mean"):
                name = target.removeprefix("model.init_args.")
                if "." not in name:  # a model argument (the encoder's links always fit)
                    for hparams in (self.model.hparams, getattr(self.model, "_hparams_initial", {})):
                        hparams.pop(name, None)
                continue
            raise SystemExit(
                f"error: {type(self.datamodule).__name__}.{attribute} = {value!r} is linked into "
                f"'{target}', but that argument does not exist in the model config. Name the "
                f"argument '{target.rsplit('.', 1)[-1]}' in the model class (src/cli.py DATA_LINKS), "
                "or use a DataModule that does not provide it."
            )


def check_compaction(datamodule: object, model: object) -> None:
    """Compacted batches and an attention that reads the order: one line before any step runs."""
    encoder = getattr(model, "encoder", None)
    if getattr(datamodule, "compacts", False) and isinstance(encoder, TransformerEncoder):
        ordered = encoder.order_reading_attention()
        if ordered:
            why = compaction_refusal(ordered)
            raise SystemExit(f"error: data.init_args.compact_masked is true, but {why}")


def check_config(config: Namespace) -> None:
    """Refuse, right after parsing, values no run can train with, before data or model exist.

    One place for the numeric ranges (``src.cli_errors.VALUE_RULES``) and the YOSO kernel
    backend, so a bad value is one ``error:`` line (exit 2), not a traceback at fit time.
    """
    check_values(config)
    attention = config.get(f"{ENCODER}.attention")
    args = attention.get("init_args") if isinstance(attention, Namespace) else None
    if not isinstance(args, Namespace) or "backend" not in args:
        return  # not a YOSO attention: the kernels (and $YOSO_BACKEND) are never used
    if args.get("expectation") and not args.get("conv_window"):
        return  # YOSO-E without convolution computes in plain PyTorch: no kernels either
    try:
        check_backend_choice(args.backend)  # None: $YOSO_BACKEND (the attention's own choice wins)
    except ValueError as error:
        where = "" if args.backend is None else f"{ENCODER}.attention.init_args."
        fail(f"{where}{error}")  # the message starts with "backend=..." or "YOSO_BACKEND=..."


def _data_attribute(name: str):  # noqa: ANN202 (a compute_fn for link_arguments)
    def compute(data: object) -> Any:
        return getattr(data, name, None)
    compute.__name__ = f"data_{name}"
    return compute


def _accepts(config: Namespace, target: str) -> bool:
    """Whether the class configured above ``target`` has an ``__init__`` argument of that name."""
    owner, argument = target.rsplit(".init_args.", 1)
    node = config.get(owner)
    if not isinstance(node, Namespace) or "class_path" not in node:
        return False
    return argument in init_arguments(node.class_path)


def follow_default_root_dir(config: Namespace) -> None:
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
