"""The bf16 option of the CPU LSH backward: its speed and the error it adds, next to sampling noise.

Why: the surrogate gradient is itself an estimate (m hashes, ~1/sqrt(m) relative
noise), so rounding its contractions' operands to bf16 is worth it if the added
error is small next to that noise. One run measures, on the same inputs and the
same hash codes:

- ``noise``: ||g_m - g_E|| / ||g_E||, the float32 LSH gradient (m hashes) against
  its expectation g_E (the dense surrogate, float64), averaged over draws;
- ``bf16 added``: ||g_bf16 - g_m|| / ||g_E||, the bf16 kernel against float32 on the
  same codes;
- the backward op's time, float32 and bf16, alternated in one process (median).

    python benchmarks/bf16_backward.py                      # both default shapes
    python benchmarks/bf16_backward.py --out benchmarks/results/bf16_backward_cpu_2core

Queries and keys are clustered (64 centres + noise), as attention inputs are, so
that buckets are uneven and collision probabilities far from 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.kernels import build, ops  # noqa: E402
from src.kernels.autograd import _expectation_backward  # noqa: E402
from src.kernels.options import YOSOOptions  # noqa: E402
from src.kernels.pipeline import draw_hash_parameters, hash_vectors, normalize_rows  # noqa: E402

# name: (batch x heads, n, head dim, tau); the first is the kernel goal's shape, the
# second the paper's ListOps layer (B=32, H=2 -> 64 batch-heads; 8 measured for the error).
SHAPES = {"goal-4096": (16, 4096, 64, 8), "listops-2000": (64, 2000, 32, 11)}


def clustered(bh: int, n: int, d: int, g: torch.Generator) -> torch.Tensor:
    centres = torch.randn(bh, 64, d, generator=g)
    pick = torch.randint(0, 64, (bh, n), generator=g)
    return normalize_rows(torch.gather(centres, 1, pick[..., None].expand(-1, -1, d))
                          + 0.7 * torch.randn(bh, n, d, generator=g))


def inputs(bh: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k = clustered(bh, n, d, g), clustered(bh, n, d, g)
    v, grad = torch.randn(bh, n, d, generator=g), torch.randn(bh, n, d, generator=g)
    return q, k, v, grad, torch.ones(bh, n, dtype=torch.bool)


def codes(q, k, m: int, tau: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    options = YOSOOptions(hash_code_len=tau, num_hashes=m)
    params = draw_hash_parameters(q.shape[0], q.shape[-1], options, q.device, g)
    return hash_vectors(q, params, options, ops), hash_vectors(k, params, options, ops)


def relative(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / scale.norm()).item()


def errors(shape: tuple, m: int, error_heads: int, draws: int) -> dict:
    """Sampling noise and bf16 added error of dQ and dK, averaged over ``draws`` hash draws."""
    _, n, d, tau = shape
    q, k, v, grad, mask = inputs(error_heads, n, d, seed=1)
    expected = _expectation_backward(grad.double(), mask.double(), mask.double(), q.double(),
                                     k.double(), v.double(), tau)
    totals = {f"{name}_{what}": 0.0 for name in ("dq", "dk") for what in ("noise", "bf16_added")}
    for draw in range(draws):
        qc, kc = codes(q, k, m, tau, seed=100 + draw)
        fp32 = ops.lsh_backward(mask, qc, q, mask, kc, k, v, grad, tau, False)
        bf16 = ops.lsh_backward(mask, qc, q, mask, kc, k, v, grad, tau, True)
        for index, name in enumerate(("dq", "dk")):
            totals[f"{name}_noise"] += relative(fp32[index], expected[index], expected[index]) / draws
            totals[f"{name}_bf16_added"] += relative(bf16[index], fp32[index], expected[index]) / draws
    return totals


def timings(shape: tuple, m: int, repeats: int) -> dict:
    """Median time of the backward op, float32 and bf16 alternated (same inputs and codes)."""
    bh, n, d, tau = shape
    q, k, v, grad, mask = inputs(bh, n, d, seed=2)
    qc, kc = codes(q, k, m, tau, seed=3)
    times = {False: [], True: []}
    for flag in (False, True):  # warm-up: scratch, pages
        ops.lsh_backward(mask, qc, q, mask, kc, k, v, grad, tau, flag)
    for _ in range(repeats):
        for flag in (False, True):
            start = time.perf_counter()
            ops.lsh_backward(mask, qc, q, mask, kc, k, v, grad, tau, flag)
            times[flag].append(time.perf_counter() - start)
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    return {"fp32_ms": fp32 * 1e3, "bf16_ms": bf16 * 1e3, "speedup": fp32 / bf16}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--hashes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--error-heads", type=int, default=4, help="batch-heads of the (dense) error check")
    parser.add_argument("--draws", type=int, default=3, help="hash draws the errors are averaged over")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write <out>.md")
    args = parser.parse_args()
    extension = build.extension("cpu")
    header = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"kernels {extension.active_isa()}, "
              f"bf16 contractions: {'yes' if extension.bf16_supported() else 'no (float32 path)'}; "
              f"load average {os.getloadavg()[0]:.2f} at start")
    command = f"Command: `python {' '.join(sys.argv)}`"
    columns = ("| shape (BH, n, d, tau) | m | dQ noise | dQ bf16 added | dK noise | dK bf16 added "
               "| backward fp32 | backward bf16 | bf16 speed-up |")
    lines = [header, "", command, "", columns, "|" + " --- |" * 9]
    print(header, flush=True)
    for name in args.shapes:
        shape = SHAPES[name]
        for m in args.hashes:
            e = errors(shape, m, args.error_heads, args.draws)
            t = timings(shape, m, args.repeats)
            row = (f"| {name} {shape} | {m} | {e['dq_noise']:.3f} | {e['dq_bf16_added']:.4f} | "
                   f"{e['dk_noise']:.3f} | {e['dk_bf16_added']:.4f} | {t['fp32_ms']:.0f} ms | "
                   f"{t['bf16_ms']:.0f} ms | {t['speedup']:.2f}x |")
            lines.append(row)
            print(row, flush=True)
    lines.append(f"\nload average {os.getloadavg()[0]:.2f} at end")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
