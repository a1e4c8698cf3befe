"""Time and memory of attention implementations versus sequence length.

Each (attention, length) point runs in a fresh worker process so that its peak
memory is measured alone (CPU: growth of the resident set; CUDA: the caching
allocator's peak) and a point that runs out of memory cannot take the others
down. The median of several forward+backward repeats is reported.

    python benchmarks/attention.py --lengths 1024 4096 16384
    python benchmarks/attention.py --device cuda --lengths 1024 8192 65536 --out results/h100

Attention names: ``softmax`` (SDPA, fp32), ``softmax-bf16``/``softmax-fp16``,
``yoso-e`` (expectation), ``yoso-<m>`` (sampling with m hashes, tau 8, LSH
backward), ``yoso-c-<m>`` (plus YOSO-C's convolution on V, window 31),
``yoso-<m>-bf16`` (bf16 inputs), ``yoso-<m>-bf16bwd`` (float32 inputs,
bf16 backward contractions); ``@<backend>`` picks a YOSO backend, e.g. ``yoso-32@reference``.
Writes ``<out>.csv``, ``<out>.md`` (the table) and ``<out>.png`` (log-log plot).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import MALLOC_POLICIES, run_point, time_and_peak  # noqa: E402

DEFAULT_CPU = ["softmax", "yoso-e", "yoso-32@reference", "yoso-32"]
DEFAULT_CUDA = ["softmax", "softmax-bf16", "yoso-e", "yoso-16", "yoso-32"]


def parse_attention(name: str) -> dict:
    """``yoso-32@cpu`` -> {'kind': 'yoso', 'num_hashes': 32, 'backend': 'cpu', ...}."""
    base, _, backend = name.partition("@")
    if base.startswith("softmax"):
        dtype = {"softmax": "float32", "softmax-bf16": "bfloat16", "softmax-fp16": "float16"}.get(base)
        if dtype is None:
            raise ValueError(f"unknown softmax variant {name!r}")
        return {"kind": "softmax", "dtype": dtype}
    if base == "yoso-e":
        return {"kind": "yoso", "expectation": True, "backend": backend or None, "dtype": "float32"}
    if base.startswith("yoso-") and base.endswith("-bf16") and base[5:-5].isdigit():
        # bf16 in and out (the kernels widen to float32)
        return {"kind": "yoso", "num_hashes": int(base[5:-5]), "backend": backend or None,
                "dtype": "bfloat16"}
    if base.startswith("yoso-") and base.endswith("-bf16bwd") and base[5:-8].isdigit():
        # float32 in and out, backward_precision="bfloat16"
        return {"kind": "yoso", "num_hashes": int(base[5:-8]), "backend": backend or None,
                "dtype": "float32", "backward_precision": "bfloat16"}
    if base.startswith("yoso-c-") and base[7:].isdigit():  # YOSO-C: plus the conv (window 31) on V
        return {"kind": "yoso", "num_hashes": int(base[7:]), "backend": backend or None, "dtype": "float32",
                "conv_window": 31}
    if base.startswith("yoso-") and base[5:].isdigit():
        return {"kind": "yoso", "num_hashes": int(base[5:]), "backend": backend or None, "dtype": "float32"}
    raise ValueError(f"unknown attention {name!r}; see --help")


def estimated_bytes(spec: dict, batch_heads: int, length: int, head_dim: int) -> float:
    """Rough peak memory, to skip points that cannot fit instead of crashing."""
    linear = 12 * batch_heads * length * head_dim * 4
    if spec["kind"] == "yoso" and spec.get("expectation"):
        return linear + 6 * batch_heads * length**2 * 4
    return linear


def run_worker(args: argparse.Namespace) -> None:
    """Measure one point and print one JSON line (runs in its own process)."""
    import torch

    from src.models.components.attention import SoftmaxAttention, YOSOAttention

    spec = parse_attention(args.attention)
    device = torch.device(args.device)
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(args.batch, args.length, device=device)
    if spec["kind"] == "softmax":
        module = SoftmaxAttention(args.heads, args.head_dim)
        mask = None  # plain SDPA: the fastest path is the fair baseline
    elif spec.get("expectation"):
        module = YOSOAttention(args.heads, args.head_dim, hash_code_len=args.hash_code_len,
                               expectation=True, backend=spec["backend"])
    else:
        module = YOSOAttention(args.heads, args.head_dim, num_hashes=spec["num_hashes"],
                               hash_code_len=args.hash_code_len, backend=spec["backend"],
                               backward_precision=spec.get("backward_precision", "float32"),
                               conv_window=spec.get("conv_window"))
    module.to(device)

    def step() -> None:
        out = module(q, k, v, mask)
        out.float().sum().backward()
        for t in (q, k, v):
            t.grad = None

    print(json.dumps(time_and_peak(step, device.type, args.repeats)))


def measure(args: argparse.Namespace, attention: str, length: int) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--attention", attention, "--length", str(length),
        "--device", args.device, "--batch", str(args.batch), "--heads", str(args.heads),
        "--head-dim", str(args.head_dim), "--hash-code-len", str(args.hash_code_len),
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]
    return run_point(cmd, args.timeout, args.malloc)


def format_table(rows: list[dict], attentions: list[str], lengths: list[int]) -> str:
    header = "| attention | " + " | ".join(f"n={n}" for n in lengths) + " |"
    lines = [header, "|" + " --- |" * (len(lengths) + 1)]
    for name in attentions:
        cells = []
        for n in lengths:
            row = next(r for r in rows if r["attention"] == name and r["length"] == n)
            if row["status"] == "ok":
                cells.append(f"{row['median_s'] * 1e3:.1f} ms / {row['peak_bytes'] / 2**20:.0f} MiB")
            else:
                cells.append(row["status"])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], attentions: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in attentions:
        pts = [r for r in rows if r["attention"] == name and r["status"] == "ok"]
        if not pts:
            continue
        ns = [r["length"] for r in pts]
        ax_t.plot(ns, [r["median_s"] for r in pts], marker="o", label=name)
        ax_m.plot(ns, [max(r["peak_bytes"], 1) / 2**20 for r in pts], marker="o", label=name)
    for ax, label in ((ax_t, "forward+backward time (s)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--attentions", nargs="+", default=None, help="default depends on --device")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--hash-code-len", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point")
    parser.add_argument("--malloc", default="glibc", choices=list(MALLOC_POLICIES),
                        help="allocator policy of the workers: glibc's default, or 'mmap' (freed "
                             "blocks >= 128 KiB go back to the OS: peak RSS = peak of live tensors)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention"),
                        help="output prefix: writes <out>.csv, <out>.md, <out>.png")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attention", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        run_worker(args)
        return

    attentions = args.attentions or (DEFAULT_CUDA if args.device == "cuda" else DEFAULT_CPU)
    for name in attentions:
        parse_attention(name)  # fail fast on a typo
    memory_limit = _available_bytes(args.device)
    rows = []
    for name in attentions:
        for n in args.lengths:
            need = estimated_bytes(parse_attention(name), args.batch * args.heads, n, args.head_dim)
            if need > 0.6 * memory_limit:
                result = {"status": f"skipped (needs ~{need / 2**30:.0f} GiB)"}
            else:
                result = measure(args, name, n)
            rows.append({"attention": name, "length": n, **result})
            shown = f"{result['median_s'] * 1e3:9.1f} ms" if result["status"] == "ok" else result["status"]
            print(f"{name:>20} n={n:<7} {shown}", flush=True)

    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = (f"{device_name(args.device)} | B={args.batch} H={args.heads} d={args.head_dim} "
             f"tau={args.hash_code_len} | median of {args.repeats} fwd+bwd | {when}")
    table = format_table(rows, attentions, args.lengths)
    print("\n" + title + "\n\n" + table)
    _print_slopes(rows, attentions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["attention", "length", "status", "median_s", "peak_bytes"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in writer.fieldnames})
    args.out.with_suffix(".md").write_text(f"{title}\n\n{table}\n")
    plot(rows, attentions, args.out.with_suffix(".png"), title)
    print(f"\nwrote {args.out}.csv, .md, .png")


def _print_slopes(rows: list[dict], attentions: list[str]) -> None:
    """Growth exponent of time between the smallest and largest measured length."""
    for name in attentions:
        ok = [r for r in rows if r["attention"] == name and r["status"] == "ok"]
        pts = sorted((r["length"], r["median_s"]) for r in ok)
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            (n0, t0), (n1, t1) = pts[0], pts[-1]
            print(f"time exponent {name}: {math.log(t1 / t0) / math.log(n1 / n0):.2f} (n={n0}..{n1})")


def _available_bytes(device: str) -> float:
    if device == "cuda":
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


if __name__ == "__main__":
    main()
