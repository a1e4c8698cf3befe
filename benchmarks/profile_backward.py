"""Repeated LSH backward calls for a sampling profiler: where does the backward spend its time?

    OMP_NUM_THREADS=1 perf record -o /tmp/yoso.perf python benchmarks/profile_backward.py float32
    perf report -i /tmp/yoso.perf --dsos yoso_cpu.so --percentage relative --no-children --stdio

``bfloat16`` instead of ``float32`` profiles the bf16 contractions. Shape: the kernel
goal's at n = 16384 (d = 64, m = 32, tau = 8) with 4 batch-heads; random unit q/k.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.kernels import ops  # noqa: E402
from src.kernels.pipeline import normalize_rows  # noqa: E402


def main(precision: str) -> None:
    if precision not in ("float32", "bfloat16"):
        raise SystemExit(f"usage: profile_backward.py float32|bfloat16, got {precision!r}")
    torch.manual_seed(0)
    bh, n, d, m, tau = 4, 16384, 64, 32, 8
    q, k = normalize_rows(torch.randn(bh, n, d)), normalize_rows(torch.randn(bh, n, d))
    v, grad = torch.randn(bh, n, d), torch.randn(bh, n, d)
    mask = torch.ones(bh, n, dtype=torch.bool)
    projection = torch.randn(bh, d, m * tau)
    q_codes, k_codes = ops.hash_gaussian(q, projection, tau), ops.hash_gaussian(k, projection, tau)
    bf16 = precision == "bfloat16"
    ops.lsh_backward(mask, q_codes, q, mask, k_codes, k, v, grad, tau, bf16)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        ops.lsh_backward(mask, q_codes, q, mask, k_codes, k, v, grad, tau, bf16)
    print(f"{precision}: {(time.perf_counter() - start) / 3 * 1e3:.0f} ms per backward")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "float32")
