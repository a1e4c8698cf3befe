"""Checkpoints we read: safely (``weights_only``), and checked against the model they are for.

``resolve_ckpt_path`` turns ``--ckpt_path`` (a file, ``last`` or ``auto``) into a file of this
run's own ``<task>/<attention>`` folder; ``check_resume_checkpoint`` guards it (training state,
model identity, shapes); ``read_state_dict``, ``state_mismatches`` and
``identity_differences`` also serve ``init_from`` (``src.models.base_module``);
``reopen_unfinished_epoch`` lets a run that ended mid-epoch be extended exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

LAST = "last.ckpt"
ENCODER_SHAPE = ("dim", "depth", "num_heads", "head_dim", "ffn_dim", "vocab_size")


def read_state_dict(path: str | Path) -> tuple[dict, dict]:
    """``(checkpoint, state_dict)`` of a Lightning checkpoint, loaded with ``weights_only=True``.

    A file that is not a checkpoint (text, truncated, a pickle with code) or one
    without a ``state_dict`` is a ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated file, text, a pickle with code, ...
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error)[:200]}); "
            "pass a .ckpt file written by this project's train.py (e.g. checkpoints/last.ckpt)"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} has no 'state_dict': not a Lightning checkpoint of this project")
    return checkpoint, checkpoint["state_dict"]


def state_mismatches(own: dict, state: dict) -> list[str]:
    """Missing, unexpected and differently shaped keys of ``state`` against ``own``, named."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing in checkpoint: {_first(missing)}")
    if unexpected:
        problems.append(f"not in this model: {_first(unexpected)}")
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:8]))
    return problems


def check_resume_checkpoint(path: str | Path, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the problem if ``path`` cannot resume ``model``.

    Loaded with ``weights_only=True`` (no code runs). A file that is not a
    checkpoint, a checkpoint without training state, or one whose tensors do
    not match the model (missing, unexpected or differently shaped keys, named)
    is refused before any training starts.
    """
    checkpoint, state = read_state_dict(path)
    missing_state = [k for k in ("optimizer_states", "loops", "global_step") if k not in checkpoint]
    if missing_state:
        raise ValueError(
            f"{path} holds weights but no training state ({', '.join(missing_state)} missing), so a run "
            "cannot resume from it; start a new run from its weights with model.init_from instead"
        )
    differences = identity_differences(checkpoint.get("hyper_parameters"), model_identity(model))
    if differences:
        raise ValueError(
            f"{path} was written by another model ({'; '.join(differences)}); resume with the config "
            "of the run that wrote it (its version folder has config.yaml), or start a new run "
            "from its weights with model.init_from"
        )
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"{path} was saved by a model of another shape ({' | '.join(problems)}); resume with the "
            "config of the run that wrote it (its version folder has config.yaml)"
        )


def model_identity(source: nn.Module | Mapping | None) -> dict[str, Any]:
    """What makes two models the same model: task module, encoder, attention class, encoder shape.

    ``source``: a model (its hyper-parameters, its class where they do not say) or a
    checkpoint's ``hyper_parameters``. Unknown entries are left out (a model built in
    code, not from a config, records its encoder as a module).
    """
    hparams = getattr(source, "hparams", source)
    hparams = dict(hparams) if isinstance(hparams, Mapping) else {}
    identity: dict[str, Any] = {"task module": hparams.get("_class_path")}
    if identity["task module"] is None and isinstance(source, nn.Module):
        identity["task module"] = f"{type(source).__module__}.{type(source).__qualname__}"
    encoder = hparams.get("encoder")
    if isinstance(encoder, Mapping):
        args = encoder.get("init_args") or {}
        attention = args.get("attention")
        identity["encoder"] = encoder.get("class_path")
        identity["attention"] = attention.get("class_path") if isinstance(attention, Mapping) else None
        identity.update({key: args.get(key) for key in ENCODER_SHAPE})
    return {key: value for key, value in identity.items() if value is not None}


def identity_differences(saved: Mapping | None, own: Mapping[str, Any],
                         keys: tuple[str, ...] | None = None) -> list[str]:
    """``"<what>: checkpoint <a>, this run <b>"`` for each identity entry (``keys``: all) that differs.

    ``saved``: a checkpoint's ``hyper_parameters`` (None: nothing to compare, e.g. a file
    written outside train.py).
    """
    theirs = model_identity(saved)
    shared = [key for key in theirs if key in own and (keys is None or key in keys)]
    return [f"{key}: checkpoint {theirs[key]}, this run {own[key]}" for key in shared
            if theirs[key] != own[key]]


def resolve_ckpt_path(ckpt_path: str | None, trainer: Trainer) -> str | None:
    """The checkpoint ``--ckpt_path`` names: a file, ``last`` or ``auto``.

    ``last``: the newest ``last.ckpt`` of this run's own folder (``last_checkpoints``),
    an error if there is none. ``auto``: the same, but none starts a new run (a job script
    that is resubmitted resumes, and its first submission starts). Lightning's own
    ``"last"`` looks only in the new run's version folder, which is empty. Any other value
    must be an existing file.
    """
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "auto"):
        folder, found = last_checkpoints(trainer)
        if found:
            return str(found[-1])
        if ckpt_path == "auto":
            rank_zero_info(f"--ckpt_path auto: no {LAST} under {folder}; starting a new run")
            return None
        raise SystemExit(f"error: --ckpt_path last: no {LAST} under {folder}; pass the checkpoint file "
                         "instead, or --ckpt_path auto to start a new run when there is none")
    if not Path(ckpt_path).is_file():
        raise SystemExit(f"error: --ckpt_path {ckpt_path} does not exist (or is not a file)")
    return ckpt_path


def last_checkpoints(trainer: Trainer) -> tuple[Path, list[Path]]:
    """``(folder searched, its last.ckpt files oldest first)`` of this run's own log folder.

    With a logger, ``<save_dir>/<name>/<version>/checkpoints/last.ckpt`` (train.py names the
    logger ``<task>/<attention>``, so another task's or attention's run is never picked);
    a ``--checkpoint.dirpath`` given in the config, that folder; neither, the trainer's
    ``default_root_dir/checkpoints``.
    """
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    logger = trainer.logger
    if dirpath:
        folder, pattern = Path(dirpath), LAST
    elif logger is not None and logger.save_dir is not None:
        folder, pattern = Path(logger.save_dir) / logger.name, f"*/checkpoints/{LAST}"
    else:
        folder, pattern = Path(trainer.default_root_dir) / "checkpoints", LAST
    return folder, sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)


def reopen_unfinished_epoch(checkpoint: dict[str, Any]) -> bool:
    """Make a checkpoint written when fit ended resume like one written after its last batch.

    When fit stops (``max_steps``, a stop request) Lightning closes the epoch (its
    ``processed`` and ``completed`` count it) and the batch before ``on_train_end`` writes
    ``last.ckpt``. A longer run resumed from it would start the next epoch at batch 0 even
    when the epoch was unfinished, and at an epoch's end it would count its batches on from
    the old epoch's: other batches, other per-batch seeds (``BatchSeeds`` keys on epoch and
    batch index) and log steps one too far, compared with an uninterrupted run. Taking the
    epoch, the batch and the logged-step counter back by one gives the state a checkpoint
    after that same batch holds (``on_train_batch_end``), which Lightning resumes exactly.
    Returns whether the checkpoint was changed (a checkpoint written during fit is not).
    """
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    counters = fit.get("epoch_loop.state_dict", {})
    if not epochs or not batches or "_batches_that_stepped" not in counters:
        return False
    done = epochs["current"]
    closed = done["ready"] == done["started"] == done["processed"] == done["completed"] >= 1
    batch = batches["current"]
    if not closed or not batch["ready"] == batch["started"] == batch["processed"] == batch["completed"] >= 1:
        return False
    for scope in ("current", "total"):
        epochs[scope]["processed"] -= 1
        epochs[scope]["completed"] -= 1
        batches[scope]["completed"] -= 1
    counters["_batches_that_stepped"] -= 1
    checkpoint["epoch"] = epochs["current"]["completed"]
    return True


def _first(names: list[str], count: int = 8) -> str:
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")
