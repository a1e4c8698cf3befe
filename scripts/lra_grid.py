"""Run every LRA task x attention pair with ``train.py``, one after another, or print the commands.

    python scripts/lra_grid.py --tasks listops text --attentions softmax yoso_c_16 --trainer gpu
    python scripts/lra_grid.py --tasks all --attentions all --print > grid.txt   # one command a line

Each run is ``train.py --config <task config> --config configs/attention/<attention>.yaml
[--config configs/trainer/<trainer>.yaml] [extra ...]``, the tasks and their configs being those
of ``src/lra_tasks.py``; it logs to
``logs/<task>/<attention>/version_N``, so the pairs never share a folder and
``scripts/lra_table.py logs`` collects them. For a cluster array job, run line
``$SLURM_ARRAY_TASK_ID`` of the printed file (e.g. ``sed -n "${SLURM_ARRAY_TASK_ID}p" grid.txt | bash``).
``--extra`` passes the rest of the command line to every run (put it last).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: make the repository's `src` importable

from src.lra_tasks import TASKS  # noqa: E402


def available(kind: str) -> list[str]:
    """Config names under ``configs/<kind>/``."""
    return sorted(p.stem for p in (ROOT / "configs" / kind).glob("*.yaml"))


def choose(requested: list[str], options: list[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    """``all`` or names that exist, in the order given; an unknown name is a usage error."""
    if requested == ["all"]:
        return options
    unknown = [name for name in requested if name not in options]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from: all, {', '.join(options)}")
    return list(dict.fromkeys(requested))


def commands(tasks: list[str], attentions: list[str], trainer: str | None, extra: list[str],
             python: str = "python") -> list[list[str]]:
    """One ``train.py`` command (argv) per task x attention, tasks outermost."""
    runs = []
    for task in tasks:
        for attention in attentions:
            argv = [python, "train.py", "--config", TASKS[task].config,
                    "--config", f"configs/attention/{attention}.yaml"]
            if trainer:
                argv += ["--config", f"configs/trainer/{trainer}.yaml"]
            runs.append(argv + extra)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True, help=f"'all' or some of {', '.join(TASKS)}")
    parser.add_argument("--attentions", nargs="+", required=True,
                        help="'all' or names of configs/attention/*.yaml (softmax, yoso_c_16, ...)")
    parser.add_argument("--trainer", default=None, help="a configs/trainer/*.yaml preset (cpu, gpu, ddp)")
    parser.add_argument("--print", action="store_true", help="print the commands, one per line; run nothing")
    parser.add_argument("--keep_going", action="store_true", help="continue after a failed run")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="arguments for every train.py run (must come last)")
    args = parser.parse_args(argv)
    tasks = choose(args.tasks, list(TASKS), "task", parser)
    attentions = choose(args.attentions, available("attention"), "attention", parser)
    if args.trainer is not None:
        choose([args.trainer], available("trainer"), "trainer", parser)
    if args.print:
        for command in commands(tasks, attentions, args.trainer, args.extra):
            print(shlex.join(command))
        return 0
    failed = []
    planned = commands(tasks, attentions, args.trainer, args.extra, python=sys.executable)
    for index, command in enumerate(planned, start=1):
        print(f"[{index}/{len(planned)}] {shlex.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT)
        print(f"[{index}/{len(planned)}] exit {code} after {(time.perf_counter() - started) / 60:.1f} min",
              flush=True)
        if code:
            failed.append(shlex.join(command[1:]))
            if not args.keep_going:
                break
    if failed:
        print("failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    print("done; collect the results with: python scripts/lra_table.py logs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
