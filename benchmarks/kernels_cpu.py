"""Forward+backward time of YOSO attention: compiled CPU backend vs the reference.

Why: the goals of the compiled CPU kernels are stated as ratios (cpu backend vs
``backend="reference"``, and YOSO-m vs softmax SDPA), measured on the same
machine in the same process. Prints a table; one line per sequence length.

    python benchmarks/kernels_cpu.py                       # n = 1k, 4k, 16k
    python benchmarks/kernels_cpu.py --lengths 4096 --sdpa-max-n 4096

The reference path is slow (its weighted cumulation builds w x dv tables per
hash), so by default it only runs up to ``--reference-max-n``; SDPA's
quadratic cost limits it the same way (``--sdpa-max-n``).

``--per-op`` instead times each op of the compiled CPU path separately, for
every instruction-set variant this CPU runs (hashing, forward cumulation, the
fused backward, the whole forward and backward), plus dense reference points
(torch bmm fp32 and bf16, SDPA, a memory copy), each with an analytic FLOP
count and byte estimate (formulas: ``op_costs``), and writes
``benchmarks/results/kernels_cpu_ops_<cpu>.md`` and ``.csv``:

    python benchmarks/kernels_cpu.py --per-op --threads 2   # BH=16, n=4096, d=64, m=32, tau=8

How to read it: docs/kernels.md, "Per-op CPU profile".
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.kernels import build, ops, pipeline, yoso_attention  # noqa: E402
from src.kernels.options import YOSOOptions  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _inputs(batch_heads: int, length: int, dim: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, batch_heads, length, dim)
    return [torch.randn(shape, generator=generator).requires_grad_() for _ in range(4)]


def time_fwd_bwd(step, repeats: int) -> float:
    """Median wall time (s) of ``step()`` after one warm-up call."""
    return median_time(step, repeats, warmup=1)


def median_time(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time (s) of ``repeats`` calls of ``step()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def yoso_step(tensors, backend: str, num_hashes: int, tau: int, hashing: str, seed: int):
    query, key, value, grad = tensors
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        for tensor in (query, key, value):
            tensor.grad = None
        out = yoso_attention(
            query,
            key,
            value,
            num_hashes=num_hashes,
            hash_code_len=tau,
            hashing=hashing,
            backend=backend,
            generator=generator,
        )
        out.backward(grad.detach())

    return step


def sdpa_step(tensors):
    query, key, value, grad = tensors

    def step() -> None:
        for tensor in (query, key, value):
            tensor.grad = None
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        out.backward(grad.detach())

    return step


# ---------------------------------------------------------------------------
# --per-op: each op of the compiled CPU path, per instruction-set variant


@dataclass(frozen=True)
class OpShape:
    """One attention call: ``BH`` batch-heads, ``n`` queries = keys, head dim ``d`` = ``dv``."""

    batch_heads: int
    length: int
    dim: int
    num_hashes: int
    tau: int
    hashing: str = "gaussian"

    def label(self) -> str:
        return (f"BH={self.batch_heads} n={self.length} d={self.dim} m={self.num_hashes} "
                f"tau={self.tau}")


def hash_op_name(hashing: str) -> str:
    return f"hash_{hashing}"


def backward_contraction_flops(rows_q: float, rows_k: float, d: int, dv: int) -> float:
    """FLOPs of one bucket's dQ/dK contractions, by the method the kernel picks for it.

    ``yoso_cpu_isa.inc`` (``backward_task``): pairs P = |Q||K|; P <= 8 (scalar) and
    P (dv + 2d) <= (|Q| + |K|) 2 d dv ("direct") cost 2 P (dv + 2d); otherwise the
    table method costs 4 (|Q| + |K|) d dv.
    """
    pairs = rows_q * rows_k
    direct = pairs * (dv + 2 * d)
    table = (rows_q + rows_k) * 2 * d * dv
    return 2 * direct if pairs <= 8 or direct <= table else 2 * table


def op_costs(op: str, s: OpShape) -> tuple[float, float, float]:
    """Analytic ``(flops, bytes_min, bytes_touched)`` of one YOSO op call at shape ``s``.

    Notation: B = batch-heads, n = queries = keys, d = dv = head dim, m hashes of tau
    bits, W = 2**tau buckets, c = n / W rows per bucket and side (the mean under
    uniformly spread codes; the run prints the measured collision count next to it),
    fp32 = 4 bytes, int32 codes. A FLOP is a multiply or an add (an FMA is 2); the
    kernels' padding (d, m tau to whole vectors) and masks (1 byte a row) are not
    counted. ``bytes_min`` = every input read once and every output written once: the
    least DRAM traffic (compare its GB/s with the ``copy`` row). ``bytes_touched`` =
    the rows the kernel streams through its loops, re-reads included (tables, gathered
    rows): traffic to the caches, most of it from L1/L2.

    - ``hash_gaussian`` (queries and keys, 2 calls, as the pipeline makes):
      flops = 2 * 2 B n d m tau (one GEMM against the [d, m tau] projection);
      bytes_min = bytes_touched = 2 * 4 (B n d + B d m tau + B n m).
    - ``hash_fast`` (2 calls): D = next power of two >= max(d, tau), p = ceil(m / (D / tau))
      rotations, each 3 Hadamard transforms (D log2 D adds) and 3 sign scalings (D):
      flops = 2 * B n p (3 D log2 D + 3 D); bytes = 2 * 4 (B n d + 3 B p D + B n m).
    - ``lsh_cumulation`` (table build: each key adds its value row to one table row per
      hash; gather: each query adds its m table rows):
      flops = B m (n + n) d;
      bytes_min = 4 (2 B n m + B n d + B n d) (codes, values, output);
      bytes_touched = 4 B m (2 n + n) d + 4 (2 B n m) (a table row is read and written
      per key, read per query, per hash).
    - ``lsh_backward`` and ``lsh_backward_bf16`` (fused dQ, dK, dV; per hash and bucket
      of c queries and c keys): flops = B m W [contraction(c, c)] + B m (n + 2 n) d, where
      contraction = ``backward_contraction_flops`` (direct: S = G_Q V_K^T, dQ += S K,
      dK += S^T Q, 2 c^2 (dv + 2d)) and dV adds each query's G row to its bucket sum
      (n d) and that sum to each key's dV row (2 n d);
      bytes_min = 4 (2 B n m + 4 B n d + 3 B n d) (codes; q, k, v, G; dQ, dK, dV);
      bytes_touched = 4 B m (4 n d + 2 * 3 n d) + 4 (2 B n m) (per hash every row of q, k,
      v, G gathered once and every row of dQ, dK, dV read and written once).
    - ``yoso_forward`` = hash + lsh_cumulation, ``yoso_backward`` = lsh_backward: the
      kernels' costs only; their time also holds the PyTorch glue (normalising,
      masking, NaN propagation, autograd), which the summary reports as the rest.
    """
    b, n, d, m, tau = s.batch_heads, s.length, s.dim, s.num_hashes, s.tau
    buckets = 1 << tau
    codes = 4.0 * 2 * b * n * m  # query and key codes, int32
    if op.startswith("hash_"):
        if s.hashing == "gaussian":
            flops = 2.0 * 2 * b * n * d * m * tau
            data = 2 * 4.0 * (b * n * d + b * d * m * tau + b * n * m)
        else:
            width = 1 << max(0, math.ceil(math.log2(max(d, tau))))
            parts = -(-m // (width // tau))
            flops = 2.0 * b * n * parts * (3 * width * math.log2(width) + 3 * width)
            data = 2 * 4.0 * (b * n * d + 3 * b * parts * width + b * n * m)
        return flops, data, data
    if op == "lsh_cumulation":
        flops = float(b * m * (n + n) * d)
        return flops, codes + 4.0 * (b * n * d + b * n * d), 4.0 * b * m * (2 * n + n) * d + codes
    if op in ("lsh_backward", "lsh_backward_bf16"):
        per_bucket = n / buckets
        flops = b * m * buckets * backward_contraction_flops(per_bucket, per_bucket, d, d)
        flops += float(b * m * (n + 2 * n) * d)
        bytes_min = codes + 4.0 * (4 * b * n * d + 3 * b * n * d)
        return flops, bytes_min, 4.0 * b * m * (4 * n * d + 6 * n * d) + codes
    if op == "yoso_forward":
        parts = [op_costs(hash_op_name(s.hashing), s), op_costs("lsh_cumulation", s)]
        return tuple(sum(values) for values in zip(*parts))  # type: ignore[return-value]
    if op == "yoso_backward":
        return op_costs("lsh_backward", s)
    raise ValueError(f"no cost formula for op {op!r}")


def bmm_costs(batch: int, rows: int, inner: int, cols: int, element_bytes: int) -> tuple[float, float]:
    """``(flops, bytes)`` of ``bmm([batch, rows, inner], [batch, inner, cols])``: 2 b r i c FLOPs,
    both operands read and the product written once."""
    flops = 2.0 * batch * rows * inner * cols
    data = float(element_bytes) * batch * (rows * inner + inner * cols + rows * cols)
    return flops, data


def sdpa_costs(s: OpShape) -> tuple[float, float]:
    """``(flops, bytes)`` of SDPA forward + backward (fp32): 2 GEMMs of 2 B n^2 d forward and 4
    backward (dV, dP, dQ, dK; a recomputed S not counted) = 12 B n^2 d; bytes 4 B n d (4 + 8):
    q, k, v read and the output written, then q, k, v, out, dOut read and dQ, dK, dV written."""
    b, n, d = s.batch_heads, s.length, s.dim
    return 12.0 * b * n * n * d, 4.0 * b * n * d * 12


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``lscpu``-free fallbacks)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> dict[str, bool] | None:
    """Whether the CPU lists each of ``CPU_FLAGS`` (None where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return {flag: flag in present for flag in CPU_FLAGS}
    return None


def cpu_slug(model: str) -> str:
    """``model`` as a file-name part: "Intel(R) Xeon(R) Platinum 8480+" -> "intel_xeon_platinum_8480"."""
    text = re.sub(r"\((r|tm)\)", " ", model.lower())
    text = re.sub(r"@.*$", " ", text)
    text = re.sub(r"\b(cpu|processor)\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "unknown_cpu"


def header_line(model: str) -> str:
    flags = cpu_flags()
    listed = ", ".join(f"{name} {'?' if flags is None else 'yes' if flags[name] else 'no'}"
                       for name in CPU_FLAGS)
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"{model} | {torch.get_num_threads()} threads | {listed} | torch {torch.__version__} "
            f"(ATen CPU capability {capability}) | {date}")


@dataclass
class OpInputs:
    shape: OpShape
    options: YOSOOptions
    prepared: pipeline.Prepared
    parameters: torch.Tensor
    codes: tuple[torch.Tensor, torch.Tensor]
    grad: torch.Tensor
    attention: list[torch.Tensor]  # query, key, value [1, BH, n, d] (requiring grad), grad of the output


def make_op_inputs(s: OpShape, seed: int) -> OpInputs:
    """Random unit queries/keys, values, one hash draw and its codes, an upstream gradient."""
    generator = torch.Generator().manual_seed(seed)
    options = YOSOOptions(hash_code_len=s.tau, num_hashes=s.num_hashes, hashing=s.hashing, backend="cpu")
    attention = _inputs(s.batch_heads, s.length, s.dim, seed)
    query, key, value = (tensor.detach() for tensor in attention[:3])
    mask = torch.ones(1, s.length, dtype=torch.bool)
    prepared = pipeline.prepare(query, key, value, mask, mask)
    parameters = pipeline.draw_hash_parameters(s.batch_heads, s.dim, options, torch.device("cpu"), generator)
    codes = (pipeline.hash_vectors(prepared.q, parameters, options, ops),
             pipeline.hash_vectors(prepared.k, parameters, options, ops))
    grad = torch.randn(s.batch_heads, s.length, s.dim, generator=generator)
    return OpInputs(s, options, prepared, parameters, codes, grad, attention)


def colliding_pairs(codes: tuple[torch.Tensor, torch.Tensor], tau: int) -> float:
    """Mean number of (query, key) pairs sharing a bucket, per batch-head and hash."""
    query_codes, key_codes = codes
    bh, _, m = query_codes.shape
    buckets = 1 << tau
    offsets = torch.arange(bh * m).reshape(bh, 1, m) * buckets
    size = bh * m * buckets
    per_query = torch.bincount((query_codes.long() + offsets).flatten(), minlength=size).double()
    per_key = torch.bincount((key_codes.long() + offsets).flatten(), minlength=size).double()
    return float((per_query * per_key).sum()) / (bh * m)


def yoso_op_steps(x: OpInputs) -> dict[str, Callable[[], object]]:
    """The timed calls: the ops as the pipeline calls them, and the whole attention's two passes.

    They run under whichever variant is selected when called (``set_isa``); the
    ``lsh_backward_bf16`` step runs fp32 contractions under a variant without AVX512-BF16.
    """
    s, p, options = x.shape, x.prepared, x.options
    qcodes, kcodes = x.codes
    tau = s.tau

    def hashing():
        return (pipeline.hash_vectors(p.q, x.parameters, options, ops),
                pipeline.hash_vectors(p.k, x.parameters, options, ops))

    def backward(bf16: bool) -> Callable[[], object]:
        return lambda: ops.lsh_backward(p.query_mask, qcodes, p.q, p.key_mask, kcodes, p.k, p.v, x.grad,
                                        tau, bf16)

    query, key, value, out_grad = x.attention
    generator = torch.Generator().manual_seed(1)

    def forward():
        return yoso_attention(query, key, value, options=options, generator=generator)

    out = forward()  # the graph the backward step runs (again and again: retain_graph)
    return {
        hash_op_name(s.hashing): hashing,
        "lsh_cumulation": lambda: ops.lsh_cumulation(p.query_mask, qcodes, p.key_mask, kcodes, p.v, tau),
        "lsh_backward": backward(False),
        "lsh_backward_bf16": backward(True),
        "yoso_forward": forward,
        "yoso_backward": lambda: torch.autograd.grad(out, (query, key, value), out_grad, retain_graph=True),
    }


def _row(isa: str, op: str, shape: str, n: int, seconds: float, flops: float, bytes_min: float,
         bytes_touched: float, repeats: int) -> dict:
    return {
        "isa": isa, "op": op, "shape": shape, "n": n, "median_ms": seconds * 1e3, "flops": flops,
        "bytes_min": bytes_min, "bytes_touched": bytes_touched,
        "gflop_s": flops / seconds / 1e9, "gb_s_min": bytes_min / seconds / 1e9,
        "gb_s_touched": bytes_touched / seconds / 1e9, "repeats": repeats,
    }


def _select(extension, isa: str) -> None:
    if not extension.set_isa(isa):
        raise SystemExit(f"set_isa({isa!r}) failed")


def time_yoso_ops(x: OpInputs, extension, isas: list[str], repeats: int, warmup: int) -> list[dict]:
    """Median time of every op under every variant in ``isas``, one row each.

    Interleaved: after the warm-up calls, each round times every (variant, op) once, so
    that a change of machine load or clock speed during the run falls on all variants
    alike. ``lsh_backward_bf16`` only under variants with the bf16 backward.
    """
    steps = yoso_op_steps(x)
    plan = []
    for isa in isas:
        _select(extension, isa)
        bf16 = bool(extension.bf16_supported())
        plan += [(isa, op) for op in steps if op != "lsh_backward_bf16" or bf16]
    for isa, op in plan:
        _select(extension, isa)
        for _ in range(warmup):
            steps[op]()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    rounds = max(1, repeats)
    for round_ in range(rounds):
        print(f"  round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
        for isa, op in plan:
            _select(extension, isa)
            start = time.perf_counter()
            steps[op]()
            times[(isa, op)].append(time.perf_counter() - start)
    rows = []
    for isa, op in plan:
        flops, bytes_min, bytes_touched = op_costs(op, x.shape)
        rows.append(_row(isa, op, x.shape.label(), x.shape.length, statistics.median(times[(isa, op)]),
                         flops, bytes_min, bytes_touched, rounds))
    return rows


def time_reference_points(s: OpShape, repeats: int, warmup: int, dense_max_mib: float,
                          sdpa_max_n: int, stream_mib: float, seed: int) -> list[dict]:
    """Dense torch ops at this shape (ISA "torch": oneDNN/MKL pick their own path)."""
    generator = torch.Generator().manual_seed(seed)
    n, d = s.length, s.dim
    rows = []

    def bmm_row(op: str, batch: int, rows_: int, cols: int, dtype: torch.dtype) -> dict:
        a = torch.randn(batch, rows_, d, generator=generator).to(dtype)
        b = torch.randn(batch, d, cols, generator=generator).to(dtype)
        out = torch.empty(batch, rows_, cols, dtype=dtype)  # preallocated: no page faults timed
        seconds = median_time(lambda: torch.bmm(a, b, out=out), repeats, warmup)
        flops, data = bmm_costs(batch, rows_, d, cols, a.element_size())
        return _row("torch", op, f"{batch}x{rows_}x{d}x{cols}", n, seconds, flops, data, data, repeats)

    # Q K^T of softmax attention, on as many batch-heads as keep the scores under dense_max_mib.
    heads = max(1, min(s.batch_heads, int(dense_max_mib * 2**20 // (4 * n * n))))
    # S = G_Q V_K^T of the backward at the mean bucket size, for one hash (BH * W buckets).
    buckets = 1 << s.tau
    per_bucket = max(1, n // buckets)
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rows.append(bmm_row(f"bmm_qk_{tag}", heads, n, n, dtype))
        rows.append(bmm_row(f"bmm_bucket_{tag}", s.batch_heads * buckets, per_bucket, per_bucket, dtype))
    if n <= sdpa_max_n:
        seconds = median_time(sdpa_step(_inputs(s.batch_heads, n, d, seed)), repeats, warmup)
        flops, data = sdpa_costs(s)
        rows.append(_row("torch", "sdpa_fwd_bwd_fp32", s.label().rsplit(" m=", 1)[0], n, seconds, flops,
                         data, data, repeats))
    floats = max(1, int(stream_mib * 2**20 // 4))
    source = torch.randn(floats, generator=generator)
    target = torch.empty_like(source)
    seconds = median_time(lambda: target.copy_(source), repeats, warmup)
    data = 2.0 * 4 * floats
    rows.append(_row("torch", "copy_fp32", f"{floats * 4 / 2**20:.0f} MiB", n, seconds, 0.0, data, data,
                     repeats))
    return rows


def run_per_op(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """All rows (every length, variant and op, then the reference points) and summary lines."""
    extension = build.extension("cpu")  # build (or load) before timing; one library holds every variant
    supported = extension.supported_isas().split(",")
    isas = args.isas or supported
    unknown = [isa for isa in isas if isa not in supported]
    if unknown:
        raise SystemExit(f"--isas {unknown} not runnable here; this CPU runs {supported}")
    original = extension.active_isa()
    rows: list[dict] = []
    notes: list[str] = []
    for length in args.lengths:
        shape = OpShape(args.batch_heads, length, args.dim, args.num_hashes, args.tau, args.hashing)
        x = make_op_inputs(shape, seed=length)
        pairs = colliding_pairs(x.codes, args.tau)
        uniform = length * length / (1 << args.tau)
        notes.append(f"n={length}: colliding (query, key) pairs per batch-head and hash: measured "
                     f"{pairs:.0f}, uniform-code formula n^2/2^tau = {uniform:.0f} "
                     f"(ratio {pairs / uniform:.2f})")
        print(f"timing n={length}, variants {', '.join(isas)} ...", file=sys.stderr, flush=True)
        try:
            rows += time_yoso_ops(x, extension, isas, args.repeats, args.warmup)
        finally:
            extension.set_isa(original)
        print(f"timing n={length} dense reference points ...", file=sys.stderr, flush=True)
        reference = time_reference_points(shape, args.repeats, args.warmup, args.dense_max_mib,
                                          args.sdpa_max_n, args.stream_mib, seed=length)
        rows += reference
        notes += summary_lines(rows, length, shape.hashing, reference)
    return rows, notes


def summary_lines(rows: list[dict], length: int, hashing: str, reference: list[dict]) -> list[str]:
    """Per variant: the PyTorch glue around the kernels and YOSO vs SDPA (fwd + bwd)."""
    times = {(r["isa"], r["op"]): r["median_ms"] for r in rows if r["n"] == length}
    sdpa = next((r["median_ms"] for r in reference if r["op"] == "sdpa_fwd_bwd_fp32"), None)
    lines = []
    for isa in dict.fromkeys(r["isa"] for r in rows if r["n"] == length and r["isa"] != "torch"):
        forward, backward = times[(isa, "yoso_forward")], times[(isa, "yoso_backward")]
        glue_fwd = forward - times[(isa, hash_op_name(hashing))] - times[(isa, "lsh_cumulation")]
        glue_bwd = backward - times[(isa, "lsh_backward")]
        line = (f"n={length} {isa}: fwd+bwd {forward + backward:.1f} ms; glue (not in the kernel rows): "
                f"forward {glue_fwd:.1f} ms, backward {glue_bwd:.1f} ms")
        if sdpa is not None:
            line += f"; SDPA fwd+bwd / YOSO fwd+bwd = {sdpa / (forward + backward):.1f}x"
        lines.append(line)
    return lines


CSV_FIELDS = ("cpu", "threads", "torch", "isa", "op", "shape", "n", "median_ms", "flops", "bytes_min",
              "bytes_touched", "gflop_s", "gb_s_min", "gb_s_touched", "repeats")


def _number(value: float) -> str:
    """4 significant digits, no exponent (whole numbers from 1000 up)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def markdown(header: str, config: str, rows: list[dict], notes: list[str]) -> str:
    lines = [header, "", config, "",
             "| isa | op | shape | ms | GFLOP | MB min | MB touched | GFLOP/s | GB/s min | GB/s touched |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        values = (r["median_ms"], r["flops"] / 1e9, r["bytes_min"] / 1e6, r["bytes_touched"] / 1e6,
                  r["gflop_s"], r["gb_s_min"], r["gb_s_touched"])
        lines.append(f"| {r['isa']} | {r['op']} | {r['shape']} | " + " | ".join(map(_number, values)) + " |")
    lines += [""] + [f"- {note}" for note in notes]
    lines += ["", "Columns, formulas and how to read them: docs/kernels.md, \"Per-op CPU profile\"."]
    return "\n".join(lines) + "\n"


def write_results(out: Path, header: str, config: str, rows: list[dict], notes: list[str],
                  model: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({"cpu": model, "threads": torch.get_num_threads(), "torch": torch.__version__,
                             **{key: r[key] for key in CSV_FIELDS if key in r}})
    out.with_suffix(".md").write_text(markdown(header, config, rows, notes))


def main_per_op(args: argparse.Namespace) -> None:
    model = cpu_model()
    header = header_line(model)
    config = (f"YOSO-{args.num_hashes}, tau={args.tau}, {args.hashing} hash, B*H={args.batch_heads}, "
              f"d={args.dim}, fp32 inputs, n in {args.lengths}; median of {args.repeats} after "
              f"{args.warmup} warm-up (variants interleaved); `python benchmarks/kernels_cpu.py "
              f"{shlex.join(sys.argv[1:])}`")
    if args.note:
        config += f"\n\n{args.note}"
    rows, notes = run_per_op(args)
    text = markdown(header, config, rows, notes)
    print(text, end="")
    out = Path(args.out) if args.out else RESULTS_DIR / f"kernels_cpu_ops_{cpu_slug(model)}"
    write_results(out, header, config, rows, notes, model)
    print(f"wrote {out.with_suffix('.md')} and .csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="sequence lengths (default 1024 4096 16384; --per-op: 4096)")
    parser.add_argument("--batch-heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num-hashes", type=int, default=32)
    parser.add_argument("--tau", type=int, default=8)
    parser.add_argument("--hashing", choices=("gaussian", "fast"), default="gaussian")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 3; --per-op: 5)")
    parser.add_argument("--reference-max-n", type=int, default=1024)
    parser.add_argument("--sdpa-max-n", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    per_op = parser.add_argument_group("--per-op")
    per_op.add_argument("--per-op", action="store_true",
                        help="time each op per ISA variant; writes benchmarks/results/kernels_cpu_ops_<cpu>")
    per_op.add_argument("--isas", nargs="+", default=None,
                        help="variants to time (default: every one this CPU runs, best first)")
    per_op.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    per_op.add_argument("--dense-max-mib", type=float, default=512,
                        help="cap on the fp32 scores of the bmm_qk rows (fewer batch-heads above it)")
    per_op.add_argument("--stream-mib", type=float, default=256, help="size of the copy_fp32 row's tensor")
    per_op.add_argument("--note", default="", help="a line for the Markdown (e.g. why the run is small)")
    per_op.add_argument("--out", default=None,
                        help="output path without suffix (default benchmarks/results/kernels_cpu_ops_<cpu>)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.per_op:
        args.lengths = args.lengths or [4096]
        args.repeats = args.repeats or 5
        main_per_op(args)
        return
    args.lengths = args.lengths or [1024, 4096, 16384]
    args.repeats = args.repeats or 3

    isa = build.extension("cpu").active_isa()  # build (or load) before timing
    print(
        f"# YOSO-{args.num_hashes} fwd+bwd, tau={args.tau}, {args.hashing} hash, LSH backward, "
        f"B*H={args.batch_heads}, d={args.dim}, fp32, {torch.get_num_threads()} threads, "
        f"cpu kernels: {isa}; median of {args.repeats}"
    )
    columns = ("n", "reference s", "cpu s", "ref/cpu", "sdpa s", "sdpa/cpu")
    widths = (7, 11, 8, 7, 8, 8)
    header = " | ".join(f"{name:>{width}}" for name, width in zip(columns, widths))
    print(header)
    print("-" * len(header))
    cpu_times = {}
    for length in args.lengths:
        tensors = _inputs(args.batch_heads, length, args.dim, seed=length)
        step = yoso_step(tensors, "cpu", args.num_hashes, args.tau, args.hashing, seed=0)
        cpu_s = time_fwd_bwd(step, args.repeats)
        cpu_times[length] = cpu_s
        ref_s = sdpa_s = math.nan
        if length <= args.reference_max_n:
            step = yoso_step(tensors, "reference", args.num_hashes, args.tau, args.hashing, seed=0)
            ref_s = time_fwd_bwd(step, 1)
        if length <= args.sdpa_max_n:
            sdpa_s = time_fwd_bwd(sdpa_step(tensors), 1 if length > 8192 else args.repeats)
        print(
            f"{length:>7} | {ref_s:>11.3f} | {cpu_s:>8.3f} | {ref_s / cpu_s:>7.1f} | "
            f"{sdpa_s:>8.3f} | {sdpa_s / cpu_s:>8.1f}",
            flush=True,
        )
    lengths = sorted(cpu_times)
    if len(lengths) > 1:
        lo, hi = lengths[0], lengths[-1]
        exponent = math.log(cpu_times[hi] / cpu_times[lo]) / math.log(hi / lo)
        print(f"cpu time ~ n^{exponent:.2f} from n={lo} to n={hi}")


if __name__ == "__main__":
    main()
