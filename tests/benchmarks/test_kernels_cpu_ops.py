"""``kernels_cpu.py --per-op`` runs end to end on a tiny shape: one row per op and ISA variant,
positive times, and FLOP counts equal to the formulas its docstring states (recomputed here,
not imported). No timing asserts: timings live in benchmarks/results."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from src.kernels import build

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kernels_cpu_benchmark",
                                               ROOT / "benchmarks" / "kernels_cpu.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up there
_spec.loader.exec_module(bench)

# BH, n, d, m, tau of the tiny run
B, N, D, M, TAU = 2, 256, 16, 4, 4
YOSO_OPS = {"hash_gaussian", "lsh_cumulation", "lsh_backward", "yoso_forward", "yoso_backward"}
TORCH_OPS = {"bmm_qk_fp32", "bmm_qk_bf16", "bmm_bucket_fp32", "bmm_bucket_bf16", "sdpa_fwd_bwd_fp32",
             "copy_fp32"}


def expected_flops(b: int, n: int, d: int, m: int, tau: int) -> dict[str, float]:
    """The docstring's formulas, written out again (n queries = n keys, dv = d)."""
    buckets = 2**tau
    rows = n / buckets  # per bucket and side
    pairs = rows * rows
    direct, table = pairs * (d + 2 * d), 2 * rows * 2 * d * d
    contraction = 2 * (direct if pairs <= 8 or direct <= table else table)
    hashing = 2 * 2 * b * n * d * m * tau
    cumulation = b * m * 2 * n * d
    backward = b * m * buckets * contraction + b * m * 3 * n * d
    return {"hash_gaussian": hashing, "lsh_cumulation": cumulation, "lsh_backward": backward,
            "lsh_backward_bf16": backward, "yoso_forward": hashing + cumulation, "yoso_backward": backward}


def test_cost_formulas_pick_the_backward_method_the_kernel_picks():
    # tau 4, n 256: 16 x 16 rows a bucket, direct method; tau 1: 128 x 128, table method
    for tau in (4, 1):
        shape = bench.OpShape(B, N, D, M, tau)
        for op, flops in expected_flops(B, N, D, M, tau).items():
            assert bench.op_costs(op, shape)[0] == pytest.approx(flops, rel=1e-12), (op, tau)
    assert bench.backward_contraction_flops(2, 3, 64, 64) == 2 * 6 * (64 + 128)  # scalar path
    assert bench.backward_contraction_flops(128, 128, 16, 16) == 4 * 256 * 16 * 16  # table method


def test_cpu_names_become_file_names():
    assert bench.cpu_slug("Intel(R) Xeon(R) Platinum 8480+") == "intel_xeon_platinum_8480"
    assert bench.cpu_slug("AMD EPYC 7B13 64-Core Processor") == "amd_epyc_7b13_64_core"
    assert bench.cpu_slug("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz") == "intel_core_i7_8700"
    assert bench.cpu_slug("") == "unknown_cpu"


def test_tiny_per_op_run_writes_one_row_per_op_and_isa(tmp_path):
    missing = build.missing_tool("cpu")
    if missing is not None:
        pytest.skip(f"the YOSO cpu kernels cannot be built here: {missing}")
    out = tmp_path / "ops"
    done = subprocess.run(
        [sys.executable, "benchmarks/kernels_cpu.py", "--per-op", "--lengths", str(N),
         "--batch-heads", str(B), "--dim", str(D), "--num-hashes", str(M), "--tau", str(TAU),
         "--repeats", "1", "--threads", "1",
         "--stream-mib", "1", "--dense-max-mib", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    supported = build.extension("cpu").supported_isas().split(",")
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert all(float(row["median_ms"]) > 0 for row in rows)
    assert {row["threads"] for row in rows} == {"1"}
    by_isa: dict[str, list[str]] = {}
    for row in rows:
        by_isa.setdefault(row["isa"], []).append(row["op"])
    assert set(by_isa) == {*supported, "torch"}
    for isa in supported:
        # only the avx512bf16 variant has the bf16 backward
        wanted = YOSO_OPS | ({"lsh_backward_bf16"} if isa == "avx512bf16" else set())
        assert sorted(by_isa[isa]) == sorted(wanted), isa
    assert sorted(by_isa["torch"]) == sorted(TORCH_OPS)

    flops = expected_flops(B, N, D, M, TAU)
    for row in rows:
        if row["isa"] != "torch":
            assert float(row["flops"]) == pytest.approx(flops[row["op"]], rel=1e-9), row["op"]
        elif row["op"].startswith("bmm_"):
            batch, m_rows, inner, cols = map(int, row["shape"].split("x"))
            assert inner == D
            assert float(row["flops"]) == pytest.approx(2 * batch * m_rows * inner * cols, rel=1e-9)
        elif row["op"] == "sdpa_fwd_bwd_fp32":
            assert float(row["flops"]) == pytest.approx(12 * B * N * N * D, rel=1e-9)
        assert float(row["gflop_s"]) == pytest.approx(
            float(row["flops"]) / (float(row["median_ms"]) / 1e3) / 1e9, rel=1e-6)
    # bucket GEMMs at the mean bucket size, one hash: BH * 2^tau of (n / 2^tau)^2
    bucket = next(row for row in rows if row["op"] == "bmm_bucket_fp32")
    assert bucket["shape"] == f"{B * 2**TAU}x{N // 2**TAU}x{D}x{N // 2**TAU}"

    markdown = out.with_suffix(".md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows)  # header and separator, then one per CSV row
    assert "threads" in markdown.splitlines()[0] and "amx_bf16" in markdown.splitlines()[0]
    assert "colliding (query, key) pairs" in markdown
