"""The paper-style LRA table and a figure from finished runs: ``python scripts/lra_table.py logs``.

Reads ``<log dir>/<task>/<attention>/version_N`` (the folders ``train.py`` writes; the tasks,
their titles and the published reference row come from ``src/lra_tasks.py``). A run is finished
when its events hold ``test/acc`` (the best checkpoint's test accuracy); per task and attention
the latest finished version is used. Writes ``lra_table.md`` (accuracy %, average over the
tasks, training time and peak memory) and ``lra_accuracy_vs_time.png`` (validation accuracy
against training time per task, the test accuracy as a star) into ``--out`` (default: the log
dir), and prints the table.

Training time and peak memory come from ``ResourceMonitor`` (``resources/*`` tags). Runs
without them get the time between the first event and the last train/val event (marked *),
and no memory figure.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure  # drawn without pyplot: no GUI backend, no global state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository's `src`

from src.lra_tasks import REFERENCE_AVERAGE, REFERENCE_LABEL, TASKS  # noqa: E402

ATTENTION_ORDER = ("softmax", "yoso_e", "yoso_16", "yoso_32", "yoso_c_16", "yoso_c_32",
                   "nystrom", "performer", "linformer")
MISSING = "–"
TABLE_FILE = "lra_table.md"
FIGURE_FILE = "lra_accuracy_vs_time.png"


@dataclass
class Run:
    """What the table needs from one finished run."""

    task: str
    attention: str
    version: int
    path: Path
    test_acc: float  # fraction, best checkpoint
    train_time_s: float
    time_from_events: bool  # no ResourceMonitor: time from event timestamps
    peak_memory_mib: float | None = None
    memory_on_gpu: bool | None = None
    val_curve: list[tuple[float, float]] = field(default_factory=list)  # (seconds, val acc)


def _last(events: EventAccumulator, tag: str) -> float | None:
    scalars = events.Scalars(tag) if tag in events.Tags()["scalars"] else []
    return scalars[-1].value if scalars else None


def _val_curve(events: EventAccumulator, start: float) -> list[tuple[float, float]]:
    """(training seconds, val acc) per validation.

    Seconds are the ``resources/train_time_s`` logged at the same step when there is
    one: it counts the time before a resume, so a resumed run's points sit where its
    training actually was; else the event's wall time since the run's first event.
    """
    tags = events.Tags()["scalars"]
    if "val/acc" not in tags:
        return []
    trained = [(e.step, e.value) for e in events.Scalars("resources/train_time_s")] \
        if "resources/train_time_s" in tags else []
    points = []
    for e in events.Scalars("val/acc"):
        # The monitor logs at the trainer's step after the validation, which Lightning's
        # metric logging numbers one lower: take the first time logged at or after it.
        after = [value for step, value in trained if e.step <= step <= e.step + 1]
        points.append((after[0] if after else e.wall_time - start, e.value))
    return points


def read_run(path: Path, task: str, attention: str, version: int) -> Run | None:
    """The run's figures, or ``None`` when it has no ``test/acc`` (not finished)."""
    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    test_acc = _last(events, "test/acc")
    if test_acc is None:
        return None
    tags = events.Tags()["scalars"]
    start = events.FirstEventTimestamp()
    train_time = _last(events, "resources/train_time_s")
    from_events = train_time is None
    if from_events:
        training = [tag for tag in tags if tag.startswith(("train/", "val/"))]
        stamps = [e.wall_time for tag in training for e in events.Scalars(tag)]
        train_time = max(stamps) - start if stamps else 0.0
    on_gpu = _last(events, "resources/peak_memory_is_gpu")
    curve = _val_curve(events, start)
    return Run(task, attention, version, path, test_acc, train_time, from_events,
               _last(events, "resources/peak_memory_mib"), None if on_gpu is None else on_gpu > 0.5, curve)


def find_runs(log_dir: Path) -> dict[tuple[str, str], Run]:
    """The latest finished version of every task x attention under ``log_dir``."""
    runs: dict[tuple[str, str], Run] = {}
    for task in TASKS:
        folders = [p for p in (log_dir / task).glob("*/version_*") if re.fullmatch(r"version_\d+", p.name)]
        for folder in sorted(folders, key=lambda p: int(p.name.split("_")[1]), reverse=True):
            key = (task, folder.parent.name)
            if key in runs:
                continue
            run = read_run(folder, task, folder.parent.name, int(folder.name.split("_")[1]))
            if run is None:
                print(f"skipped {folder}: no test/acc (unfinished)", file=sys.stderr)
            else:
                runs[key] = run
    return runs


def attention_rows(runs: dict[tuple[str, str], Run]) -> list[str]:
    """Attentions in the paper's order, any others after them alphabetically."""
    names = {attention for _, attention in runs}
    known = [a for a in ATTENTION_ORDER if a in names]
    return known + sorted(names - set(known))


def _accuracy(run: Run | None) -> str:
    return f"{100 * run.test_acc:.2f}" if run else MISSING


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _memory(run: Run | None) -> str:
    if run is None or run.peak_memory_mib is None:
        return MISSING
    return f"{run.peak_memory_mib:.0f} {'GPU' if run.memory_on_gpu else 'RSS'}"


def _time(run: Run | None) -> str:
    return MISSING if run is None else _minutes(run.train_time_s) + ("*" if run.time_from_events else "")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(runs: dict[tuple[str, str], Run]) -> str:
    """The accuracy table (plus total time and peak memory) and a per-task time/memory table."""
    names = [task.title for task in TASKS.values()]
    lines = [
        "Test accuracy (%) of the best checkpoint; time = training minutes summed over the tasks "
        "shown, memory = the largest peak (MiB; GPU = tensor memory, RSS = CPU process).",
        "",
        _row(["Attention", *names, "Average", "Time (min)", "Peak memory (MiB)"]),
        _row(["---"] * (len(names) + 4)),
        _row([REFERENCE_LABEL, *(f"{t.reference_acc:.2f}" for t in TASKS.values()),
              f"{REFERENCE_AVERAGE:.2f}", MISSING, MISSING]),
    ]
    for attention in attention_rows(runs):
        cells = [runs.get((task, attention)) for task in TASKS]
        done = [run for run in cells if run]
        average = (f"{100 * sum(r.test_acc for r in done) / len(done):.2f}"
                   if len(done) == len(TASKS) else MISSING)
        marked = "*" if any(r.time_from_events for r in done) else ""
        total = _minutes(sum(r.train_time_s for r in done)) + marked
        peak = max((r for r in done if r.peak_memory_mib is not None),
                   key=lambda r: r.peak_memory_mib, default=None)
        lines.append(_row([attention, *map(_accuracy, cells), average, total, _memory(peak)]))
    lines += [
        "",
        "Per task: training time (min) / peak memory (MiB).",
        "",
        _row(["Attention", *names]),
        _row(["---"] * (len(names) + 1)),
    ]
    for attention in attention_rows(runs):
        cells = [runs.get((task, attention)) for task in TASKS]
        shown = (MISSING if r is None else f"{_time(r)} / {_memory(r)}" for r in cells)
        lines.append(_row([attention, *shown]))
    if any(run.time_from_events for run in runs.values()):
        lines += ["", "\\* no ResourceMonitor in that run: time from its event timestamps "
                      "(first event to the last train/val event)."]
    if runs:
        used = (f"{task}/{name}/version_{run.version}" for (task, name), run in sorted(runs.items()))
        lines += ["", "Runs: " + ", ".join(used)]
    return "\n".join(lines) + "\n"


def plot(runs: dict[tuple[str, str], Run], path: Path) -> None:
    """Validation accuracy against training time per task; stars at each run's test accuracy."""
    tasks = [task for task in TASKS if any(t == task for t, _ in runs)] or list(TASKS)
    figure = Figure(figsize=(4.2 * len(tasks), 4.0), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    colors = {a: f"C{i}" for i, a in enumerate(attention_rows(runs))}
    for axis, task in zip(axes, tasks):
        for (run_task, attention), run in sorted(runs.items()):
            if run_task != task:
                continue
            color = colors[attention]
            if run.val_curve:
                axis.plot([s / 60 for s, _ in run.val_curve], [100 * v for _, v in run.val_curve],
                          color=color, alpha=0.6)
            axis.plot(run.train_time_s / 60, 100 * run.test_acc, "*", color=color, markersize=11,
                      label=attention)
        axis.axhline(TASKS[task].reference_acc, color="grey", linestyle="--", linewidth=1,
                     label=REFERENCE_LABEL)
        axis.set_title(TASKS[task].title)
        axis.set_xlabel("training time (min)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)  (line: val, star: test)")
    legend = {}
    for axis in axes:
        handles, labels = axis.get_legend_handles_labels()
        legend.update(zip(labels, handles))
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 5),
                  fontsize=8)
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", type=Path, help="the save_dir of the runs (e.g. logs)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: log_dir)")
    args = parser.parse_args(argv)
    if not args.log_dir.is_dir():
        parser.error(f"{args.log_dir} is not a folder")
    runs = find_runs(args.log_dir)
    if not runs:
        print(f"no finished runs (with test/acc) under {args.log_dir}/<{'|'.join(TASKS)}>/<attention>/"
              "version_N; the table holds the reference row only", file=sys.stderr)
    out = args.out or args.log_dir
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    (out / TABLE_FILE).write_text(table)
    plot(runs, out / FIGURE_FILE)
    print(table)
    print(f"wrote {out / TABLE_FILE} and {out / FIGURE_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
