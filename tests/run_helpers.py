"""Test-only callbacks that ``train.py`` subprocesses load with ``--trainer.callbacks+=...``."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    """Send ``signal_name`` after optimizer step ``step`` (a crash or a pre-emption).

    ``target``: ``process`` (this very process) or ``group`` (its whole process group, as
    ``timeout`` and SLURM do: DataLoader workers and DDP ranks included; sent by rank 0).
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL", target: str = "process") -> None:
        if target not in ("process", "group"):
            raise ValueError(f"target must be 'process' or 'group', got {target!r}")
        self.step = step
        self.signal_name = signal_name
        self.target = target

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        signum = getattr(signal, self.signal_name)
        if self.target == "process":
            os.kill(os.getpid(), signum)
        elif trainer.global_rank == 0:
            os.killpg(os.getpgid(0), signum)


class DumpRankState(Callback):
    """Write each rank's final weights (rank<r>.pt) and step losses (rank<r>.json) into folder.

    (Test-only.)
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{rank}.pt")
        (self.folder / f"rank{rank}.json").write_text(json.dumps(self.losses))


class RecordSaves(Callback):
    """Append ``<rank> <step>`` to ``path`` for every checkpoint this rank dumps (once per save)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(f"{trainer.global_rank} {trainer.global_step}\n")


class KillDuringCheckpointWrite(Callback):
    """SIGKILL this process while the checkpoint of step ``step`` is being written into ``folder``.

    The checkpoint gets ``payload_mb`` of extra tensors so that writing it takes a while;
    a thread watches ``folder`` and kills as soon as a file there appears with data in it
    or an existing one changes (a temporary file, or the old ``last.ckpt`` being overwritten).
    """

    def __init__(self, step: int, folder: str, payload_mb: int = 64) -> None:
        self.step = step
        self.folder = Path(folder)
        self.payload_mb = payload_mb

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.global_step != self.step:
            return
        checkpoint["test_payload"] = [torch.ones(2**18) for _ in range(self.payload_mb)]  # 1 MB each
        before = _listing(self.folder)
        threading.Thread(target=self._kill_on_write, args=(before,), daemon=True).start()

    def _kill_on_write(self, before: dict[str, tuple[int, int]]) -> None:
        while True:
            for name, (size, mtime) in _listing(self.folder).items():
                if before.get(name, (0, None)) != (size, mtime) and (size > 0 or name in before):
                    os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.0002)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of the files in folder."""
    out = {}
    for entry in os.scandir(folder):
        try:
            stat = entry.stat()
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
        out[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return out


class FillDiskAtStep(Callback):
    """After optimizer step ``step``, fill the filesystem of ``folder`` up to ``leave_kb`` free.

    The next checkpoint written there then fails part-way with ENOSPC (test-only).
    """

    def __init__(self, step: int, folder: str, leave_kb: int = 64) -> None:
        self.step = step
        self.folder = Path(folder)
        self.leave_kb = leave_kb

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        chunk = b"\0" * (self.leave_kb * 1024)
        index = 0
        while True:
            path = self.folder / f"fill-{index}"
            try:
                path.write_bytes(chunk)
            except OSError:
                path.unlink(missing_ok=True)
                break
            index += 1
        (self.folder / "fill-0").unlink()  # leave_kb (plus the rest of the last chunk) free
