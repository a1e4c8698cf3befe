"""The task base: what every experiment (LRA, MLM, GLUE) shares, written once.

A task module adds only its head, its loss and its metrics. This class owns
the optimizer and its warm-up/decay schedule (which a resumed run with a larger
``max_steps`` stretches to its new length), one ``model_step`` for every
stage, one torchmetrics collection per stage (so DDP reductions never mix
stages), the best validation value of the monitored metric (``val/<metric>_best``,
also the metric of TensorBoard's HPARAMS tab), ``save_hyperparameters`` (a
checkpoint rebuilds the model) and ``init_from`` (start the encoder from another
run's checkpoint). Tokens per second: ``src.callbacks.throughput``.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import nn
from torch.utils.tensorboard.summary import hparams
from torchmetrics import MaxMetric, MeanMetric, MetricCollection, MinMetric

from src.checkpoints import (
    ENCODER_SHAPE,
    identity_differences,
    model_identity,
    read_state_dict,
    reopen_unfinished_epoch,
    state_mismatches,
)
from src.models.components.encoder import TransformerEncoder, repeat_position_rows
from src.models.schedules import (
    SCHEDULES,
    build_schedule,
    is_stretchable,
    schedule_kind,
    scheduled_steps,
    stretch,
    upgrade_state,
)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class TaskModule(pl.LightningModule):
    """Shared training logic around an injected encoder.

    Subclasses implement ``step_outputs(batch) -> (loss, preds, target)`` and
    ``build_metrics() -> MetricCollection``; ``monitor`` names the validation
    metric that picks the best checkpoint and its direction.

    Args:
        encoder: the shared ``TransformerEncoder`` (a config gives its class and arguments).
        optimizer: ``"adam"`` or ``"adamw"``.
        learning_rate, weight_decay: optimizer settings (paper: 1e-4, no decay).
        adam_eps: the optimizer's epsilon (torch's default 1e-8; the LRA harness: 1e-6).
        warmup_steps: linear warm-up steps; then ``schedule`` until ``trainer.max_steps``.
        schedule: ``"linear"`` decay to 0, ``"cosine"``, ``"constant"`` (after the warm-up), or
            ``"onecycle"``: ``OneCycleLR`` as the LRA harness ran it (``src.models.schedules``).
        init_from: a checkpoint of another run whose ``encoder.*`` weights start this one
            (e.g. MLM pre-training -> GLUE), or a ``transformers`` YOSO folder (``save_pretrained``);
            ignored when resuming with ``--ckpt_path``. Under ``train.py`` the encoder's architecture
            comes from it too (``src.pretrained``).
        extend_positions_to: with ``init_from``, the encoder's ``max_length`` when it is longer
            than the checkpoint's: its learned position table is grown by repeating the trained
            rows (the first rows unchanged), e.g. an MLM run at 512 continued at 4096.
    """

    monitor: ClassVar[tuple[str, str]] = ("val/acc", "max")
    stages: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    # Lightning's ThroughputMonitor (src.callbacks.throughput) asks for this to log FLOPs;
    # None: not measured (it then logs tokens and examples per second only, without a warning).
    flops_per_batch: ClassVar[int | None] = None

    def __init__(
        self,
        encoder: TransformerEncoder,
        optimizer: str = "adam",
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        warmup_steps: int = 1000,
        schedule: str = "linear",
        init_from: str | None = None,
        extend_positions_to: int | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {adam_eps}")
        if init_from is not None and not (Path(init_from).is_file()
                                          or (Path(init_from) / "config.json").is_file()):
            raise FileNotFoundError(f"init_from {init_from} is neither a checkpoint file nor a transformers "
                                    "model folder (config.json + weights)")
        if extend_positions_to is not None:
            if init_from is None:
                raise ValueError("extend_positions_to grows the position table of init_from's encoder: "
                                 "set model.init_args.init_from too")
            if extend_positions_to != encoder.max_length:
                raise ValueError(f"extend_positions_to={extend_positions_to} but the encoder's max_length is "
                                 f"{encoder.max_length}: set data.init_args.max_length {extend_positions_to}")
        # Under train.py the encoder is stored as its config (class_path + init_args),
        # so load_from_checkpoint rebuilds the whole model from the checkpoint alone.
        self.save_hyperparameters()
        self.encoder = encoder
        # ModuleDict keys may not shadow nn.Module attributes such as `train`.
        self.losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in self.stages})
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": self.build_metrics().clone(prefix=f"{stage}/") for stage in self.stages}
        )
        # Under DDP the per-step training values are reduced over all ranks (global, not rank 0's).
        for metric in [self.losses["train_loss"], *self.metrics["train_metrics"].values()]:
            metric.dist_sync_on_step = True
        name, mode = self.monitor
        self.best_monitored = MaxMetric() if mode == "max" else MinMetric()
        self._saved_schedule_steps: int | None = None  # the length a resumed checkpoint's schedule had

    # -- what a task defines -------------------------------------------------------------
    def build_metrics(self) -> MetricCollection:
        """The task's metrics, unprefixed (e.g. ``{"acc": MulticlassAccuracy(...)}``)."""
        raise NotImplementedError

    def step_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, predictions, targets)`` of one batch; metrics are updated with the last two."""
        raise NotImplementedError

    # -- one step for every stage ----------------------------------------------------------
    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Loss and metric updates shared by train/val/test."""
        loss, preds, target = self.step_outputs(batch)
        loss_metric = self.losses[f"{stage}_loss"]
        metrics = self.metrics[f"{stage}_metrics"]
        # Weighted by the number of predictions, so the epoch loss is the mean over examples
        # (tokens) whatever the batch sizes, e.g. the uneven test shards of DDP ranks.
        loss_metric(loss, weight=float(target.shape[0]) if target.dim() else 1.0)
        metrics(preds, target)
        on_step = stage == "train"
        # Stages name their keys (e.g. GLUE's val / val_mm for MNLI's two dev sets), so Lightning's
        # "/dataloader_idx_N" suffix for several dataloaders is not wanted.
        self.log(f"{stage}/loss", loss_metric, on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 add_dataloader_idx=False)
        self.log_dict(metrics, on_step=on_step, on_epoch=not on_step, prog_bar=True, add_dataloader_idx=False)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        name, _ = self.monitor
        current = self.trainer.callback_metrics.get(name)
        if current is None:
            return
        self.best_monitored(current)
        best = self.best_monitored.compute()
        self.log(f"{name}_best", best, prog_bar=True, sync_dist=True)

    def on_train_start(self) -> None:
        """A resumed run continues with the schedule of its own length; the HPARAMS tab gets its metric."""
        if self.trainer.ckpt_path:
            self.continue_schedule()
        self.declare_hparams_metric()

    @rank_zero_only
    def declare_hparams_metric(self) -> None:
        """Make ``val/<metric>_best`` the metric of TensorBoard's HPARAMS tab (it shows the latest value).

        train.py's loggers have ``default_hp_metric=False``: no ``hp_metric`` series with a -1
        placeholder. Only the tab's summary is written here; Lightning's ``log_hyperparams(params,
        metrics)`` would also write the metric at step 0, a point no validation produced.
        """
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                for summary in hparams(scalar_params(logger.hparams), {f"{self.monitor[0]}_best": 0.0}):
                    logger.experiment.file_writer.add_summary(summary)

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = OPTIMIZERS[hp.optimizer](
            self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay, eps=hp.get("adam_eps", 1e-8)
        )
        scheduler = build_schedule(optimizer, hp.schedule, hp.warmup_steps, self.schedule_length())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def schedule_length(self) -> int:
        """Optimizer steps of this run (``max_steps``, or the epochs' batches): the schedule's length."""
        return int(self.trainer.estimated_stepping_batches)

    def continue_schedule(self) -> None:
        """After a resume, give the schedule this run's length and say so when it changed.

        The restored optimizer holds the rate of the checkpoint's schedule (0.0 at the
        end of a finished linear decay): a longer ``max_steps`` would otherwise train on
        at that rate. Recomputed here, the run continues as if it had been started with
        its new length (a killed run resumed with the same length keeps its rate exactly).
        """
        saved, total = self._saved_schedule_steps, self.schedule_length()
        rates = [stretch(config.scheduler, total) for config in self.trainer.lr_scheduler_configs
                 if is_stretchable(config.scheduler)]
        if rates and saved != total:
            step = self.trainer.global_step
            rank_zero_info(
                f"Resumed at step {step} of a run scheduled for max_steps {saved or 'unknown'}; "
                f"continuing with the {self.hparams.schedule} schedule of max_steps {total}, as if the run "
                f"had started with it: LR {rates[0]:.4g} at step {step}"
            )

    # -- resuming ------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Prepare a ``--ckpt_path`` checkpoint for a run that may be longer than the one that wrote it.

        Runs before Lightning restores loops and schedulers from ``checkpoint``. A checkpoint
        written when fit ended resumes as one written after its last batch would
        (``reopen_unfinished_epoch``): the same batches and seeds as an uninterrupted run.
        The schedule's saved length is noted (``continue_schedule`` replaces it) and a state
        of the chained schedulers of older checkpoints is made loadable.
        """
        reopen_unfinished_epoch(checkpoint)
        states = checkpoint.get("lr_schedulers")
        if states:
            saved_kind = schedule_kind(states[0])
            own_kind = "onecycle" if self.hparams.schedule == "onecycle" else "warmup"
            if saved_kind is not None and saved_kind != own_kind:
                saved = "OneCycleLR" if saved_kind == "onecycle" else "a warm-up-then-decay schedule"
                hint = ("--model.init_args.schedule onecycle" if saved_kind == "onecycle" else
                        "the schedule it was trained with (for an LRA config: compose "
                        "configs/lra/variants/warmup_linear.yaml)")
                raise ValueError(f"the checkpoint was trained with {saved}, but this run is configured with "
                                 f"schedule={self.hparams.schedule!r}: resume it with {hint}")
            self._saved_schedule_steps = scheduled_steps(states[0])
            checkpoint["lr_schedulers"] = [upgrade_state(state) for state in states]

    # -- starting from another run -----------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load ``init_from`` before fitting, unless a resumed checkpoint will overwrite it anyway."""
        if stage == "fit" and self.hparams.init_from and not self.trainer.ckpt_path:
            load_encoder_weights(self.encoder, self.hparams.init_from, model_identity(self),
                                 extend_positions=self.hparams.extend_positions_to is not None)


def scalar_params(params: Mapping | Namespace, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested hyper-parameters as the flat ``a/b`` scalars that TensorBoard's HPARAMS tab takes."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in (vars(params) if isinstance(params, Namespace) else params).items():
        if isinstance(value, (Mapping, Namespace)):
            flat.update(scalar_params(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def load_encoder_weights(encoder: nn.Module, checkpoint_path: str | Path,
                         identity: Mapping[str, Any] | None = None, extend_positions: bool = False) -> None:
    """Copy the encoder weights of ``checkpoint_path`` into ``encoder``.

    ``checkpoint_path``: a Lightning checkpoint (its ``encoder.*`` tensors), or a
    ``transformers`` YOSO folder as ``save_pretrained`` writes it (its body's tensors, mapped
    by ``src.interop.hf_yoso.convert_hf_encoder_state``; a task head there is left out).
    Loaded with ``weights_only=True`` / safetensors (no code runs). Any missing, unexpected or
    differently shaped key is an error that names it, never a partial load. With the
    model's ``identity`` (``src.checkpoints.model_identity``), an encoder of another
    attention class or shape is warned about (both named): its weights may fit, but they
    were trained for another computation. The task module is not compared: starting
    another task from a pre-trained encoder (MLM -> GLUE) is what ``init_from`` is for.
    ``extend_positions``: a shorter learned position table is grown to the encoder's
    (``repeat_position_rows``) instead of being a shape error.
    """
    path = Path(checkpoint_path)
    hyper_parameters, weights = _encoder_source(path, encoder)
    differences = identity_differences(hyper_parameters, identity or {},
                                       ("encoder", "attention", *ENCODER_SHAPE))
    if differences:
        rank_zero_warn(f"init_from {path} was written by another encoder ({'; '.join(differences)})")
    if extend_positions:
        weights = _grown_positions(encoder, weights, path)
    problems = state_mismatches(encoder.state_dict(), weights)
    if problems:
        raise ValueError(
            f"the encoder in {path} does not fit this model ({' | '.join(problems)}); "
            "build the encoder with the same dim/depth/heads/vocabulary as the run that saved it"
        )
    encoder.load_state_dict(weights)


def _encoder_source(path: Path, encoder: nn.Module) -> tuple[Mapping | None, dict[str, torch.Tensor]]:
    """``(hyper-parameters naming the source's encoder, its weights under the encoder's names)``."""
    if path.is_dir():
        # The transformers format lives a layer above the models (it builds them): imported here.
        from src.interop import hf_yoso

        config = hf_yoso.encoder_config(hf_yoso.load_hf_config(path))
        return {"encoder": config}, hf_yoso.convert_hf_encoder_state(hf_yoso.read_hf_weights(path), encoder)
    checkpoint, state = read_state_dict(path)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} holds no 'encoder.*' weights (keys start with: {sorted(state)[:5]})")
    return checkpoint.get("hyper_parameters"), weights


def _grown_positions(
    encoder: nn.Module, weights: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """``weights`` with its position table grown to the encoder's length (a longer one is an error)."""
    key = "position_embedding.weight"
    offset = getattr(encoder, "position_offset", 0)
    saved = weights.get(key)
    if saved is None:
        raise ValueError(f"{path} has no learned position table ({key}) to extend")
    length = encoder.position_embedding.num_embeddings - offset
    if saved.shape[0] - offset >= length:
        raise ValueError(f"{path} already holds {saved.shape[0] - offset} positions; extend_positions_to "
                         f"{length} would not grow it: drop extend_positions_to")
    rank_zero_info(f"init_from {path}: position table grown from {saved.shape[0] - offset} to {length} "
                   "positions by repeating the trained rows")
    return {**weights, key: repeat_position_rows(saved, length, offset)}

