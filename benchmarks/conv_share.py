"""YOSO-C's convolution as a share of the YOSO-C attention layer's time, timed in one process.

Why its own script: the difference of two separate runs (YOSO-C minus YOSO) carries
the run-to-run noise of the sampled attention (bucket sizes follow the random
hashes), which is as large as the convolution itself. Here a YOSO-C layer and the
same layer without the convolution are timed alternately in one process on the same
inputs with the same hash draws (the RNG is reseeded before every step), so their
difference is what the convolution adds: its ops, its copy of V, the residual add
and the extra gradient add into V, forward + backward.

    python benchmarks/conv_share.py --length 2000 --batch 32 --heads 2 --head-dim 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import MALLOC_POLICIES, reexec_with_allocator  # noqa: E402
from src.kernels import ops  # noqa: E402
from src.models.components.attention import YOSOAttention  # noqa: E402


def paired_ms(first: Callable[[], None], second: Callable[[], None], pairs: int) -> tuple[list, list]:
    """Wall times (ms) of ``pairs`` steps of each, alternating step by step after a warm-up.

    Why alternate single steps: the layer's time drifts by +-10 % over seconds (page
    faults of fresh allocations, the other core's load); a difference taken within
    each adjacent pair cancels that drift, medians of separate blocks did not.
    """
    first(), second()  # warm-up (the extension build, the allocator's first growth)
    times: tuple[list, list] = ([], [])
    for _ in range(pairs):
        for step, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            step()
            out.append(1e3 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--hash-code-len", type=int, default=11)
    parser.add_argument("--num-hashes", type=int, default=16)
    parser.add_argument("--window", type=int, default=31)
    parser.add_argument("--pairs", type=int, default=41, help="alternating steps of the two layers")
    parser.add_argument("--malloc", default="heap", choices=list(MALLOC_POLICIES),
                        help="allocator policy (benchmarks/harness.py); 'heap' avoids page-fault noise")
    args = parser.parse_args(argv)
    reexec_with_allocator(args.malloc)

    torch.manual_seed(0)
    b, h, n, d = args.batch, args.heads, args.length, args.head_dim
    # q, k, v as the encoder makes them: strided head views of one projection output.
    projected = torch.randn(b, n, 3 * h * d, requires_grad=True)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[::3, (3 * n) // 4:] = False
    with_conv = YOSOAttention(h, d, num_hashes=args.num_hashes, hash_code_len=args.hash_code_len,
                              conv_window=args.window)
    without = YOSOAttention(h, d, num_hashes=args.num_hashes, hash_code_len=args.hash_code_len)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, h, d).transpose(1, 2)

    def step(layer: YOSOAttention) -> Callable[[], None]:
        def run() -> None:
            torch.manual_seed(1)  # the same hash draws for both layers
            q, k, v = projected.split(h * d, -1)
            layer(heads(q), heads(k), heads(v), mask).sum().backward()
        return run

    layer_ms, plain_ms = paired_ms(step(with_conv), step(without), args.pairs)
    layer_t, plain_t = statistics.median(layer_ms), statistics.median(plain_ms)
    added = [c - p for c, p in zip(layer_ms, plain_ms)]  # per adjacent pair
    conv_t = statistics.median(added)
    low, _, high = statistics.quantiles(added, n=4)

    # The op pair alone (what the compiled kernels do), on contiguous [BH, n, d] values.
    value = torch.randn(b * h, n, d)
    flat_mask = mask.repeat_interleave(h, 0)
    grad = torch.randn(b * h, n, d)
    weight = with_conv.conv.weight.detach()

    def op_pair() -> None:
        ops.sequence_conv(value, flat_mask, weight)
        ops.sequence_conv_backward(grad, value, flat_mask, weight)

    ops_t = statistics.median(paired_ms(op_pair, op_pair, args.pairs)[0])
    print(f"n={n} B={b} H={h} d={d} tau={args.hash_code_len} m={args.num_hashes} window={args.window}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator policy {args.malloc}")
    print(f"YOSO-C layer fwd+bwd: {layer_t:.1f} ms, without the convolution {plain_t:.1f} ms: "
          f"the convolution adds {conv_t:.1f} ms = {100 * conv_t / layer_t:.1f} % of the layer "
          f"(median of {args.pairs} adjacent pairs; quartiles {low:.1f} to {high:.1f} ms)")
    print(f"the sequence_conv op pair alone (forward + backward): {ops_t:.1f} ms = "
          f"{100 * ops_t / layer_t:.1f} % of the layer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
