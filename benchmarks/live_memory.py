"""Peak of live tensor memory during one ListOps training step, from torch.profiler's memory events.

Why: peak RSS (``train_step.py``) also counts what the allocator keeps after a free;
this counts only tensors alive at the same time, as a check of ``--malloc mmap``.
The peak is over the step (fwd + bwd + Adam), above what was alive before it.

    python benchmarks/live_memory.py --length 2000 --attentions softmax yoso-16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_step import build_model  # noqa: E402


def peak_live_bytes(attention: str, length: int, batch: int, tau: int) -> tuple[int, str]:
    """Peak growth of live tensor bytes during the second training step, and the op running then."""
    torch.manual_seed(0)
    model = build_model(attention, length, tau)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    ids = torch.randint(1, 20, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.bool)
    for row, real in enumerate(torch.randint(length // 2, length + 1, (batch,)).tolist()):
        mask[row, real:] = False
    ids = ids.masked_fill(~mask, 0)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
        optimizer.step()

    step()  # Adam's state exists before the measured step, as in train_step.py's steady state
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.profiler.kineto_results.events()
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = peak_at = 0
    for at, nbytes in changes:
        live += nbytes
        if live > peak:
            peak, peak_at = live, at
    running = [e for e in events if e.name() != "[memory]" and e.start_ns() <= peak_at <= e.end_ns()]
    innermost = max(running, key=lambda e: e.start_ns()).name() if running else "?"
    return peak, innermost


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--attentions", nargs="+", default=["softmax", "yoso-16", "yoso-32", "yoso-c-16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hash-code-len", type=int, default=11)
    args = parser.parse_args()
    print(f"n={args.length}, B={args.batch}, tau={args.hash_code_len}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name in args.attentions:
        peak, op = peak_live_bytes(name, args.length, args.batch, args.hash_code_len)
        print(f"{name:>10}: peak live tensors {peak / 2**20:.0f} MiB above the state before the step "
              f"(at {op})", flush=True)


if __name__ == "__main__":
    main()
