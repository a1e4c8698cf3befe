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

from src.kernels import ops  # noqa: E402
from src.models.components.attention import YOSOAttention  # noqa: E402


def median_ms(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--hash-code-len", type=int, default=11)
    parser.add_argument("--num-hashes", type=int, default=16)
    parser.add_argument("--window", type=int, default=31)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per round (median)")
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the two layers")
    args = parser.parse_args(argv)

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

    layer_ms, plain_ms = [], []
    for _ in range(args.rounds):  # alternate, so that both see the same machine state
        layer_ms.append(median_ms(step(with_conv), args.repeats))
        plain_ms.append(median_ms(step(without), args.repeats))
    layer_t, plain_t = statistics.median(layer_ms), statistics.median(plain_ms)
    added = sorted(c - p for c, p in zip(layer_ms, plain_ms))  # per round
    conv_t = statistics.median(added)

    # The op pair alone (what the compiled kernels do), on contiguous [BH, n, d] values.
    value = torch.randn(b * h, n, d)
    flat_mask = mask.repeat_interleave(h, 0)
    grad = torch.randn(b * h, n, d)
    weight = with_conv.conv.weight.detach()

    def op_pair() -> None:
        ops.sequence_conv(value, flat_mask, weight)
        ops.sequence_conv_backward(grad, value, flat_mask, weight)

    ops_t = median_ms(op_pair, args.repeats)
    print(f"n={n} B={b} H={h} d={d} tau={args.hash_code_len} m={args.num_hashes} window={args.window}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"YOSO-C layer fwd+bwd: {layer_t:.1f} ms, without the convolution {plain_t:.1f} ms: "
          f"the convolution adds {conv_t:.1f} ms = {100 * conv_t / layer_t:.1f} % of the layer "
          f"(median of {args.rounds} rounds; range {added[0]:.1f} to {added[-1]:.1f} ms)")
    print(f"the sequence_conv op pair alone (forward + backward): {ops_t:.1f} ms = "
          f"{100 * ops_t / layer_t:.1f} % of the layer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
