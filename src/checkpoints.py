"""Check a checkpoint before resuming from it: readable, a training checkpoint, and the model's shape."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def check_resume_checkpoint(path: str | Path, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the problem if ``path`` cannot resume ``model``.

    Loaded with ``weights_only=True`` (no code runs). A file that is not a
    checkpoint, a checkpoint without training state, or one whose tensors do
    not match the model (missing, unexpected or differently shaped keys, named)
    is refused before any training starts.
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
        raise ValueError(f"{path} has no 'state_dict': not a Lightning checkpoint")
    missing_state = [k for k in ("optimizer_states", "loops", "global_step") if k not in checkpoint]
    if missing_state:
        raise ValueError(
            f"{path} holds weights but no training state ({', '.join(missing_state)} missing), so a run "
            "cannot resume from it; start a new run from its weights with model.init_from instead"
        )
    state, own = checkpoint["state_dict"], model.state_dict()
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
    if problems:
        raise ValueError(
            f"{path} was saved by a model of another shape ({' | '.join(problems)}); resume with the "
            "config of the run that wrote it (its version folder has config.yaml)"
        )


def _first(names: list[str], count: int = 8) -> str:
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")
