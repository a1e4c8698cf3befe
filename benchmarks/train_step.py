"""One training step of the LRA ListOps model (fwd + bwd + Adam) per attention and length.

Why: the paper's promise is whole steps that are faster and smaller than softmax,
not only faster kernels. The model is the paper's LRA setting (2 pre-LN layers,
dim 64, 2 heads of 32, FFN 128, dropout 0.1, masked mean pooling, classifier
Linear(64, 128)-ReLU-Linear(128, 10)), built here so that the benchmark does not
depend on the LightningModule. Each point runs in its own process: median step
time after one warm-up step, and peak RSS growth over the process before the
first step (CPU) or peak allocated memory (CUDA).

    python benchmarks/train_step.py                              # n = 2000, 4096, 8192
    python benchmarks/train_step.py --lengths 2000 --attentions softmax yoso-32

Attentions: ``softmax``, ``yoso-<m>``, ``yoso-e``, ``yoso-c-<m>`` (conv window 31).
Writes ``<out>.csv``, ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import MALLOC_POLICIES, run_point, time_and_peak  # noqa: E402

DEFAULT_ATTENTIONS = ["softmax", "yoso-16", "yoso-32", "yoso-e", "yoso-c-16"]


def attention_factory(name: str, tau: int):
    """``yoso-c-16`` -> a factory ``attention(num_heads, head_dim)`` for the encoder."""
    import functools

    from src.models.components.attention import SoftmaxAttention, YOSOAttention

    if name == "softmax":
        return SoftmaxAttention
    if name == "yoso-e":
        return functools.partial(YOSOAttention, hash_code_len=tau, expectation=True)
    if name.startswith("yoso-c-"):
        return functools.partial(YOSOAttention, hash_code_len=tau, num_hashes=int(name[7:]), conv_window=31)
    if name.startswith("yoso-"):
        return functools.partial(YOSOAttention, hash_code_len=tau, num_hashes=int(name[5:]))
    raise ValueError(f"unknown attention {name!r}")


def build_model(name: str, length: int, tau: int):
    import torch
    from torch import nn

    from src.models.components.encoder import TransformerEncoder

    class ListOpsModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = TransformerEncoder(20, length, attention_factory(name, tau), dim=64, depth=2,
                                              num_heads=2, head_dim=32, ffn_dim=128, dropout=0.1)
            self.head = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = self.encoder(ids, mask)
            weights = mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            return self.head(pooled)

    return ListOpsModel()


def run_worker(args: argparse.Namespace) -> None:
    """Measure one point; print one JSON line."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.attention, args.length, args.hash_code_len).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    ids = torch.randint(1, 20, (args.batch, args.length), device=device)
    mask = torch.ones(args.batch, args.length, dtype=torch.bool, device=device)
    for row, real in enumerate(torch.randint(args.length // 2, args.length + 1, (args.batch,)).tolist()):
        mask[row, real:] = False  # ListOps batches are padded to the longest sequence
    ids = ids.masked_fill(~mask, 0)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
        loss.backward()
        optimizer.step()

    # count_warmup_memory: the first step creates Adam's state, part of a training step's footprint
    print(json.dumps(time_and_peak(step, device.type, args.repeats, count_warmup_memory=True)))


def _available_bytes() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return float(fields["MemAvailable"].split()[0]) * 1024


def measure(args: argparse.Namespace, attention: str, length: int) -> dict:
    if attention == "yoso-e":  # dense [B*H, n, n] float32 weights, ~6 live copies in fwd+bwd
        need = 6 * args.batch * 2 * length**2 * 4
        if need > 0.7 * _available_bytes():
            return {"status": f"skipped (~{need / 2**30:.0f} GiB)"}
    cmd = [sys.executable, __file__, "--worker", "--attention", attention, "--length", str(length),
           "--device", args.device, "--batch", str(args.batch), "--hash-code-len", str(args.hash_code_len),
           "--repeats", str(args.repeats)]
    return run_point(cmd, args.timeout, args.malloc)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def format_table(rows: list[dict], attentions: list[str], lengths: list[int]) -> str:
    by = {(r["attention"], r["length"]): r for r in rows}
    head = "| attention | " + " | ".join(f"n={n} time | n={n} peak" for n in lengths) + " |"
    lines = [head, "| --- |" + " --- | --- |" * len(lengths)]
    for name in attentions:
        cells = []
        for n in lengths:
            r = by[(name, n)]
            if r["status"] != "ok":
                cells += [r["status"], "-"]
                continue
            soft = by.get(("softmax", n), {})
            ratio = f" ({soft['median_s'] / r['median_s']:.2f}x)" if soft.get("status") == "ok" else ""
            cells += [f"{r['median_s'] * 1e3:.0f} ms{ratio if name != 'softmax' else ''}",
                      f"{r['peak_bytes'] / 2**20:.0f} MiB"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], attentions: list[str], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for name in attentions:
        ok = [r for r in rows if r["attention"] == name and r["status"] == "ok"]
        if ok:
            ax_t.plot([r["length"] for r in ok], [r["median_s"] for r in ok], "o-", label=name)
            ax_m.plot([r["length"] for r in ok], [r["peak_bytes"] / 2**20 for r in ok], "o-", label=name)
    for ax, label in ((ax_t, "step time (s)"), (ax_m, "peak memory growth (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 4096, 8192])
    parser.add_argument("--attentions", nargs="+", default=DEFAULT_ATTENTIONS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hash-code-len", type=int, default=11, help="ListOps: 11")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    parser.add_argument("--malloc", default="glibc", choices=list(MALLOC_POLICIES),
                        help="allocator policy of the workers: glibc's default, or 'mmap' (freed "
                             "blocks >= 128 KiB go back to the OS: peak RSS = peak of live tensors)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attention", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    import torch

    machine = (f"{cpu_model()}, {torch.get_num_threads()} threads" if args.device == "cpu"
               else torch.cuda.get_device_name(0))
    load = os.getloadavg()[0]
    title = (f"ListOps training step (2 layers, dim 64, B={args.batch}, tau={args.hash_code_len}), "
             f"{machine}, load {load:.1f}")
    print(f"# {title}\n# command: python {' '.join(sys.argv)}", flush=True)
    rows = []
    for length in args.lengths:
        for name in args.attentions:
            result = measure(args, name, length)
            rows.append({"attention": name, "length": length, **result})
            shown = (f"{result['median_s'] * 1e3:.0f} ms, {result['peak_bytes'] / 2**20:.0f} MiB"
                     if result["status"] == "ok" else result["status"])
            print(f"{name:>10} n={length:>6}: {shown}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["attention", "length", "status", "median_s", "peak_bytes"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in writer.fieldnames})
    table = format_table(rows, args.attentions, args.lengths)
    load_after = os.getloadavg()[0]
    shared = " (machine shared: load > 2)" if max(load, load_after) > 2 else ""
    note = (f"{title}{shared}\n\nCommand: `python {' '.join(sys.argv)}`; median of {args.repeats} "
            f"steps after one warm-up; peak = RSS growth over the process before the first step, "
            f"allocator policy `{args.malloc}` (see benchmarks/harness.py). "
            f"Ratios in parentheses: softmax time / this time, same run.\n\n")
    args.out.with_suffix(".md").write_text(note + table + "\n")
    plot(rows, args.attentions, args.out.with_suffix(".png"), title)
    print(table)


if __name__ == "__main__":
    main()
