"""What the approximation view costs: training time with and without ``ApproximationMonitor``.

A quickstart-sized model (2 layers, dim 64, FFN 128, 2 heads of 32, YOSO-16 with
tau 8, batch 32, padded length 100, Adam, validation every 500 steps) trains on
random tokens for ``--steps`` steps, alternately without and with the callback
at ``--every`` steps, ``--repeats`` times each, in one process after a warm-up
run (kernels loaded, caches warm). Reports the wall-time difference and the
callback's own measured time, which is the steadier figure on a shared machine,
and checks that both runs log the same final loss (training untouched).

    python benchmarks/approximation_overhead.py                      # 600 steps, every 200
    python benchmarks/approximation_overhead.py --steps 3000 --repeats 1

Writes ``benchmarks/results/approximation_overhead.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.callbacks.approximation import ApproximationMonitor  # noqa: E402
from src.models.components.attention import YOSOAttention  # noqa: E402
from src.models.components.encoder import TransformerEncoder  # noqa: E402

VOCAB, LENGTH, CLASSES = 20, 100, 10


class QuickstartSized(L.LightningModule):
    """The quickstart's encoder and head sizes; the task module itself is not needed to time the view."""

    def __init__(self) -> None:
        super().__init__()
        attention = functools.partial(YOSOAttention, num_hashes=16, hash_code_len=8)
        self.encoder = TransformerEncoder(VOCAB, LENGTH, attention, dim=64, depth=2, num_heads=2,
                                          head_dim=32, ffn_dim=128, dropout=0.1)
        self.head = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, CLASSES))

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = self.encoder(batch["input_ids"], mask)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return nn.functional.cross_entropy(self.head(pooled), batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def token_batches(size: int, batch_size: int, seed: int, shuffle: bool) -> DataLoader:
    """Random ListOps-like sequences of 10-100 tokens padded to 100, as dict batches."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, LENGTH), generator=generator)
    lengths = torch.randint(10, LENGTH + 1, (size,), generator=generator)
    mask = torch.arange(LENGTH) < lengths[:, None]
    ids[~mask] = 0
    labels = torch.randint(0, CLASSES, (size,), generator=generator)
    keys = ("input_ids", "attention_mask", "labels")
    return DataLoader(TensorDataset(ids, mask, labels), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=lambda rows: dict(zip(keys, map(torch.stack, zip(*rows)))))


def run(steps: int, monitor: ApproximationMonitor | None, log_dir: str) -> tuple[float, float, float]:
    """Wall and CPU seconds of ``trainer.fit`` and the last logged training loss."""
    L.seed_everything(42, verbose=False)
    model = QuickstartSized()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=TensorBoardLogger(log_dir, name="bench"),
        callbacks=[monitor] if monitor else [], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=25, val_check_interval=500,
        check_val_every_n_epoch=None, num_sanity_val_steps=0,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, token_batches(12000, 32, 1, True), token_batches(1000, 32, 2, False))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall, cpu, float(trainer.callback_metrics["train/loss"])


def write_report(
    args: argparse.Namespace,
    plain: list[float],
    monitored: list[float],
    plain_cpu: list[float],
    monitored_cpu: list[float],
    own: list[tuple[float, int]],
    losses: set[bool],
    loads: list[float],
) -> None:
    """The Markdown table of the repeats so far (medians)."""
    t_plain, t_monitored = statistics.median(plain), statistics.median(monitored)
    callback_seconds = statistics.median(s for s, _ in own)
    measurements = own[0][1]
    cpu_plain, cpu_monitored = statistics.median(plain_cpu), statistics.median(monitored_cpu)
    # Step time from the monitored run itself: same machine load as the callback's own time.
    step_seconds = (t_monitored - callback_seconds) / args.steps
    per_measurement = callback_seconds / max(measurements, 1)
    command = "python benchmarks/approximation_overhead.py" + (
        f" --steps {args.steps} --every {args.every} --repeats {len(plain)}")
    lines = [
        "# Cost of the approximation view (ApproximationMonitor)",
        "",
        f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs: wall times are noisy) | "
        f"torch {torch.__version__}, lightning {L.__version__} | {dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"Command: `{command}`",
        "",
        "Quickstart-sized run: 2 layers, dim 64, FFN 128, 2 heads of 32, YOSO-16 tau 8, batch 32, "
        f"length 100, {args.steps} steps, validation every 500 steps; callback every {args.every} steps "
        "with its defaults (4 examples, crop 128). Median of "
        f"{len(plain)} alternating runs each. Machine load average (5 min) after each repeat: "
        + ", ".join(f"{load:.1f}" for load in loads) + f" on {os.cpu_count()} cores.",
        "",
        "| | value |",
        "| --- | --- |",
        f"| training without the callback (wall / CPU) | {t_plain:.1f} s / {cpu_plain:.1f} s |",
        f"| training with the callback (wall / CPU) | {t_monitored:.1f} s / {cpu_monitored:.1f} s "
        f"({1000 * step_seconds:.1f} ms/step outside the callback) |",
        f"| wall-time difference | {t_monitored - t_plain:+.1f} s "
        f"({100 * (t_monitored / t_plain - 1):+.1f} %); "
        f"CPU time {100 * (cpu_monitored / cpu_plain - 1):+.1f} % |",
        f"| time inside the callback | {callback_seconds:.2f} s for {measurements} measurements "
        f"({100 * callback_seconds / t_monitored:.1f} % of the run) |",
        f"| per measurement | {1000 * per_measurement:.0f} ms (first one includes taking the batch) |",
        f"| steady-state cost at every {args.every} steps | "
        f"{100 * per_measurement / (args.every * step_seconds):.1f} % of training time |",
        f"| same final loss with and without | {'yes' if losses == {True} else 'NO'} |",
        "",
        "Reading: wall and CPU differences between the two runs follow the machine's load, which "
        "changes between runs on a shared machine (starved OpenMP threads also spin, inflating CPU "
        "time); the time inside the callback, measured within the monitored run, is the figure to read.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)



def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=200, help="the callback's every_n_steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/approximation_overhead.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as log_dir:
        run(50, None, log_dir)  # warm-up: kernels loaded, allocator and caches warm
        plain, monitored, plain_cpu, monitored_cpu, own, losses, loads = [], [], [], [], [], set(), []
        for repeat in range(args.repeats):
            seconds, cpu, loss_without = run(args.steps, None, log_dir)
            plain.append(seconds)
            plain_cpu.append(cpu)
            monitor = ApproximationMonitor(every_n_steps=args.every)
            seconds, cpu, loss_with = run(args.steps, monitor, log_dir)
            monitored.append(seconds)
            monitored_cpu.append(cpu)
            own.append((monitor.seconds, monitor.measurements))
            losses.add(loss_without == loss_with)
            print(f"repeat {repeat}: without {plain[-1]:.1f} s, with {monitored[-1]:.1f} s "
                  f"({monitor.measurements} measurements, {monitor.seconds:.2f} s in the callback), "
                  f"final loss {loss_without:.6f} / {loss_with:.6f}", flush=True)
            loads.append(os.getloadavg()[1])
            # Written after every repeat so that a run cut short still leaves its figures.
            write_report(args, plain, monitored, plain_cpu, monitored_cpu, own, losses, loads)


if __name__ == "__main__":
    main()
