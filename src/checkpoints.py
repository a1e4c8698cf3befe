"""Checkpoints we read: safely (``weights_only``), and checked against the model they are for.

``check_resume_checkpoint`` guards ``--ckpt_path``; ``read_state_dict`` and
``state_mismatches`` also serve ``init_from`` (``src.models.base_module``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"{path} was saved by a model of another shape ({' | '.join(problems)}); resume with the "
            "config of the run that wrote it (its version folder has config.yaml)"
        )


def _first(names: list[str], count: int = 8) -> str:
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")
