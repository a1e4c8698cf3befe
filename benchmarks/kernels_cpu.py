"""Forward+backward time of YOSO attention: compiled CPU backend vs the reference.

Why: the goals of the compiled CPU kernels are stated as ratios (cpu backend vs
``backend="reference"``, and YOSO-m vs softmax SDPA), measured on the same
machine in the same process. Prints a table; one line per sequence length.

    python benchmarks/kernels_cpu.py                       # n = 1k, 4k, 16k
    python benchmarks/kernels_cpu.py --lengths 4096 --sdpa-max-n 4096

The reference path is slow (its weighted cumulation builds w x dv tables per
hash), so by default it only runs up to ``--reference-max-n``; SDPA's
quadratic cost limits it the same way (``--sdpa-max-n``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.kernels import build, yoso_attention  # noqa: E402


def _inputs(batch_heads: int, length: int, dim: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, batch_heads, length, dim)
    return [torch.randn(shape, generator=generator).requires_grad_() for _ in range(4)]


def time_fwd_bwd(step, repeats: int) -> float:
    """Median wall time (s) of ``step()`` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch-heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num-hashes", type=int, default=32)
    parser.add_argument("--tau", type=int, default=8)
    parser.add_argument("--hashing", choices=("gaussian", "fast"), default="gaussian")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-max-n", type=int, default=1024)
    parser.add_argument("--sdpa-max-n", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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
