"""In-process GPU timing for ``scripts/gpu_check.sh``: one CUDA start-up for every point.

``attention.py`` gives each point its own process (clean peak memory), which costs a
CUDA start-up per point; a short GPU visit cannot afford ~70 of them. Here every
point runs in this process, timed with CUDA events after warm-up, and each row is
appended to ``<out>/timing.csv`` and ``<out>/timing.md`` as soon as it is measured, so
a run killed by its time cap keeps what it measured. Three subcommands:

    python benchmarks/gpu_timing.py sweep --device cuda --out DIR --budget-s 110
    python benchmarks/gpu_timing.py profile --device cuda --out DIR   # hash / cumulation / backward
    python benchmarks/gpu_timing.py smallcase --device cuda           # tiny run of every op (sanitizers)

``--device cpu`` with tiny ``--lengths`` runs the same code on the CPU (tests).
"""

from __future__ import annotations

import argparse
import csv
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.attention import estimated_bytes, parse_attention  # noqa: E402

ATTENTIONS = ["yoso-16", "yoso-32", "yoso-c-16", "softmax", "softmax-bf16"]
SHAPES = ["32x2", "1x16"]  # BxH: many short heads, and one sequence of many heads
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
FIELDS = ["batch", "heads", "length", "attention", "status", "median_ms", "min_ms", "peak_mib", "repeats"]
# Growth of time with n used to predict the next point from the last one (with margin).
GROWTH = {"softmax": 2.0, "yoso": 1.2}


class Stop(Exception):
    """Raised by SIGTERM (the caller's ``timeout``) so that the plot is still written."""


def _on_sigterm(signum, frame) -> None:
    raise Stop()


def parse_shape(text: str) -> tuple[int, int]:
    """``32x2`` -> (batch 32, heads 2)."""
    batch, sep, heads = text.partition("x")
    if not sep or not batch.isdigit() or not heads.isdigit() or int(batch) < 1 or int(heads) < 1:
        raise argparse.ArgumentTypeError(f"shape must be BxH with positive integers, e.g. 32x2; got {text!r}")
    return int(batch), int(heads)


class Timer:
    """Times ``step`` with CUDA events on a GPU (no host sync per kernel), wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, step: Callable[[], None]) -> float:
        """Seconds one call of ``step`` takes."""
        if not self.cuda:
            start = time.perf_counter()
            step()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


def make_step(name: str, batch: int, heads: int, length: int, head_dim: int,
              device: torch.device) -> Callable[[], None]:
    """One forward+backward of attention ``name`` (names as in ``attention.py``) on random inputs."""
    from src.models.components.attention import SoftmaxAttention, YOSOAttention

    spec = parse_attention(name)
    dtype = getattr(torch, spec["dtype"])
    shape = (batch, heads, length, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = None
    if spec["kind"] == "softmax":
        module = SoftmaxAttention(heads, head_dim)  # no mask: SDPA picks its fastest kernel
    else:
        mask = torch.ones(batch, length, device=device)
        module = YOSOAttention(heads, head_dim, num_hashes=spec["num_hashes"], hash_code_len=8,
                               backend=spec["backend"], conv_window=spec.get("conv_window"))
    module.to(device)

    def step() -> None:
        module(q, k, v, mask).float().sum().backward()
        for t in (q, k, v):
            t.grad = None

    return step


def measure(step: Callable[[], None], timer: Timer, warmup: int, repeats: int) -> dict:
    """Median and minimum of ``repeats`` timed calls after ``warmup`` untimed ones, and the peak memory."""
    for _ in range(warmup):
        step()
    timer.sync()
    if timer.cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = [timer.once(step) for _ in range(repeats)]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if timer.cuda else None
    return {"status": "ok", "median_ms": round(statistics.median(times) * 1e3, 3),
            "min_ms": round(min(times) * 1e3, 3), "peak_mib": "" if peak is None else round(peak, 1),
            "repeats": repeats}


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory (CUDA or host allocator)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class Results:
    """The CSV and Markdown files of a sweep, each row written and flushed as it comes."""

    def __init__(self, out: Path, title: str):
        out.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.md_path = out / "timing.csv", out / "timing.md"
        self.rows: list[dict] = []
        with open(self.csv_path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writeheader()
        header = "| B | H | n | attention | status | median ms | min ms | peak MiB |\n" + "| --- " * 8 + "|\n"
        self.md_path.write_text(f"{title}\n\n{header}")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerow({key: row.get(key, "") for key in FIELDS})
        cells = [row["batch"], row["heads"], row["length"], row["attention"], row["status"],
                 row.get("median_ms", ""), row.get("min_ms", ""), row.get("peak_mib", "")]
        with open(self.md_path, "a") as f:
            f.write("| " + " | ".join(str(c) for c in cells) + " |\n")
        shown = f"{row['median_ms']:10.2f} ms" if row["status"] == "ok" else row["status"]
        print(f"B={row['batch']:<3} H={row['heads']:<3} n={row['length']:<6} {row['attention']:>13} {shown}",
              flush=True)


def predicted_s(last: tuple[int, float] | None, name: str, length: int, calls: int) -> float:
    """Seconds ``calls`` steps at ``length`` should take, from the last measured length (0: unknown)."""
    if last is None:
        return 0.0
    n0, seconds = last
    growth = GROWTH[parse_attention(name)["kind"]]
    return calls * seconds * (length / n0) ** growth


def skip_reason(name: str, batch: int, heads: int, length: int, args, state: dict) -> str | None:
    """Why the point is not run (memory, its time cap, the sweep budget, an earlier OOM), or None."""
    key = (name, batch, heads)
    if key in state["oom"]:
        return f"skipped: out of memory at n={state['oom'][key]}"
    need = estimated_bytes(parse_attention(name), batch * heads, length, args.head_dim)
    if need > 0.7 * state["memory"]:
        return f"skipped: needs ~{need / 2**30:.0f} GiB"
    guess = predicted_s(state["last"].get(key), name, length, args.warmup + args.repeats)
    if guess > args.point_cap_s:
        return f"skipped: ~{guess:.0f} s > point cap {args.point_cap_s:.0f} s"
    left = args.budget_s - (time.monotonic() - state["start"])
    if guess > left or left <= 0:
        return f"skipped: sweep budget spent ({args.budget_s:.0f} s)"
    return None


def run_point(name: str, batch: int, heads: int, length: int, args, timer: Timer, state: dict) -> dict:
    """Measure one point, or say why not; a failure or OOM becomes the row's status."""
    row = {"batch": batch, "heads": heads, "length": length, "attention": name}
    reason = skip_reason(name, batch, heads, length, args, state)
    if reason:
        return {**row, "status": reason}
    try:
        step = make_step(name, batch, heads, length, args.head_dim, state["device"])
        result = measure(step, timer, args.warmup, args.repeats)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_oom(error):
            return {**row, "status": f"failed: {str(error).splitlines()[0][:90]}"}
        state["oom"][(name, batch, heads)] = length
        result = {"status": "out of memory"}
    finally:
        step = None
        if timer.cuda:
            torch.cuda.empty_cache()
    if result["status"] == "ok":
        state["last"][(name, batch, heads)] = (length, result["median_ms"] / 1e3)
    return {**row, **result}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Log-log time versus n, one panel per BxH shape; a failure only prints a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: plot skipped", flush=True)
        return
    shapes = sorted({(r["batch"], r["heads"]) for r in rows}, reverse=True)
    if not shapes:
        return
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.2), squeeze=False)
    for ax, (batch, heads) in zip(axes[0], shapes):
        for name in dict.fromkeys(r["attention"] for r in rows):
            pts = [r for r in rows if r["status"] == "ok" and r["attention"] == name
                   and (r["batch"], r["heads"]) == (batch, heads)]
            if pts:
                ax.plot([r["length"] for r in pts], [r["median_ms"] for r in pts], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel="fwd+bwd median (ms)",
               title=f"B={batch} H={heads}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def device_title(device: torch.device, args) -> str:
    """One line naming the device and the settings, for the table and the plot."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"{name} | torch {torch.__version__} | d={args.head_dim} tau=8 | median of {args.repeats} "
            f"fwd+bwd after {args.warmup} warm-up | {time.strftime('%Y-%m-%d %H:%M')}")


def memory_bytes(device: torch.device) -> float:
    """Memory the sweep may plan with: the GPU's, or the host's."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def sweep(args) -> int:
    """Every length (outer, so a cut-short run covers every attention), shape and attention."""
    device = resolve_device(args.device)
    timer = Timer(device)
    title = device_title(device, args)
    results = Results(args.out, title)
    state = {"device": device, "memory": memory_bytes(device), "oom": {}, "last": {},
             "start": time.monotonic()}
    print(title, flush=True)
    try:
        for length in args.lengths:
            for batch, heads in args.shapes:
                for name in args.attentions:
                    results.add(run_point(name, batch, heads, length, args, timer, state))
            plot(results.rows, args.out / "timing.png", title)
    except (Stop, KeyboardInterrupt):
        print("stopped: writing the plot of what was measured", flush=True)
        plot(results.rows, args.out / "timing.png", title)
        return 124
    return 0


def resolve_device(name: str) -> torch.device:
    """The torch device, or a clear exit when CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch.device(name)


def op_inputs(bh: int, n: int, d: int, m: int, tau: int, device: torch.device) -> dict:
    """Unit q/k rows, values, an upstream gradient, full masks and Gaussian hash projections."""
    from src.kernels.options import YOSOOptions
    from src.kernels.pipeline import draw_hash_parameters, normalize_rows

    g = torch.Generator(device=device).manual_seed(0)
    q = normalize_rows(torch.randn(bh, n, d, device=device, generator=g))
    k = normalize_rows(torch.randn(bh, n, d, device=device, generator=g))
    return {"q": q, "k": k, "v": torch.randn(bh, n, d, device=device, generator=g),
            "grad": torch.randn(bh, n, d, device=device, generator=g),
            "mask": torch.ones(bh, n, dtype=torch.bool, device=device),
            "params": draw_hash_parameters(bh, d, YOSOOptions(hash_code_len=tau, num_hashes=m), device, g)}


def profile(args) -> int:
    """Time each phase of the YOSO kernels at one shape, and list the top kernels by device time."""
    from src.kernels import ops

    device = resolve_device(args.device)
    timer = Timer(device)
    bh, n, d, m, tau = args.batch_heads, args.length, args.head_dim, args.num_hashes, 8
    x = op_inputs(bh, n, d, m, tau, device)
    codes = {}

    def hash_both() -> None:  # the model's default hashing (Gaussian projections)
        codes["q"] = ops.hash_gaussian(x["q"], x["params"], tau)
        codes["k"] = ops.hash_gaussian(x["k"], x["params"], tau)

    def forward() -> None:
        ops.lsh_cumulation(x["mask"], codes["q"], x["mask"], codes["k"], x["v"], tau)

    def backward() -> None:
        ops.lsh_backward(x["mask"], codes["q"], x["q"], x["mask"], codes["k"], x["k"], x["v"], x["grad"], tau)

    lines = [f"# YOSO kernel profile: {device_title(device, args)}", "",
             f"BH={bh} n={n} d={d} m={m} tau={tau}, Gaussian hash, median of {args.repeats}", "",
             "| phase | median ms | min ms |", "| --- | --- | --- |"]
    phases = (("hash (q and k)", hash_both), ("forward cumulation", forward), ("backward", backward))
    for phase, step in phases:
        result = measure(step, timer, args.warmup, args.repeats)
        lines.append(f"| {phase} | {result['median_ms']} | {result['min_ms']} |")
        print(lines[-1], flush=True)
    lines += ["", "```", kernel_table(device, [hash_both, forward, backward]), "```", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'profile.md'}", flush=True)
    return 0


def kernel_table(device: torch.device, steps: list[Callable[[], None]]) -> str:
    """torch.profiler's top 15 entries by (device) self time over one call of each step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for step in steps:
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=48)


def smallcase(args) -> int:
    """Every compiled op once on odd sizes and partial masks: a short run for compute-sanitizer."""
    from src.kernels import ops

    device = resolve_device(args.device)
    bh, nq, nk, d, m, tau = 2, 70, 50, 32, 3, 3
    g = torch.Generator(device=device).manual_seed(0)
    qm = torch.rand(bh, nq, device=device, generator=g) > 0.2
    km = torch.rand(bh, nk, device=device, generator=g) > 0.2
    qc = torch.randint(0, 2**tau, (bh, nq, m), device=device, generator=g, dtype=torch.int32)
    kc = torch.randint(0, 2**tau, (bh, nk, m), device=device, generator=g, dtype=torch.int32)
    q, k = torch.randn(bh, nq, d, device=device), torch.randn(bh, nk, d, device=device)
    v, grad = torch.randn(bh, nk, 16, device=device), torch.randn(bh, nq, 16, device=device)
    x = torch.nn.functional.normalize(torch.randn(bh, 33, d, device=device), dim=-1)
    ops.hash_gaussian(x, torch.randn(bh, d, m * tau, device=device), tau)
    ops.hash_fast(x, torch.ones(bh, 3, 1, d, device=device), m, tau)
    ops.lsh_cumulation(qm, qc, km, kc, v, tau)
    ops.lsh_backward(qm, qc, q, km, kc, k, v, grad, tau)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("small case ran: hash_gaussian, hash_fast, lsh_cumulation, lsh_backward", flush=True)
    return 0


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type accepting only positive numbers of ``kind``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def attention_name(text: str) -> str:
    """Validate an attention name early, with ``attention.py``'s message."""
    try:
        parse_attention(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = main.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    common.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    common.add_argument("--head-dim", type=positive(int), default=64)
    common.add_argument("--warmup", type=positive(int), default=2)
    common.add_argument("--repeats", type=positive(int), default=5)
    s = sub.add_parser("sweep", parents=[common], help="time attentions over lengths and shapes")
    s.add_argument("--lengths", type=positive(int), nargs="+", default=LENGTHS)
    s.add_argument("--shapes", type=parse_shape, nargs="+", default=[parse_shape(x) for x in SHAPES],
                   help="BxH pairs (default: 32x2 1x16)")
    s.add_argument("--attentions", type=attention_name, nargs="+", default=ATTENTIONS)
    s.add_argument("--point-cap-s", type=positive(float), default=20.0,
                   help="skip a point predicted to take longer (warm-up + repeats)")
    s.add_argument("--budget-s", type=positive(float), default=110.0,
                   help="stop starting points after this many seconds")
    p = sub.add_parser("profile", parents=[common], help="per-kernel profile of one shape")
    p.add_argument("--batch-heads", type=positive(int), default=16)
    p.add_argument("--length", type=positive(int), default=16384)
    p.add_argument("--num-hashes", type=positive(int), default=32)
    sub.add_parser("smallcase", parents=[common], help="every op once, for compute-sanitizer")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return {"sweep": sweep, "profile": profile, "smallcase": smallcase}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
