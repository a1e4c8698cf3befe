"""Curves of one run, finished or not: chosen TensorBoard scalars against the step, as a PNG.

``scripts/lra_table.py`` reads finished runs only; a long run that is still going (or was
stopped) is shown with this instead::

    python scripts/plot_run.py logs/pathfinder/yoso_32 --tags val/acc train/loss --out curve.png

Every ``events.out.tfevents.*`` file under the folder is read (a resumed run writes one file per
process); where two files hold the same step, the later file's value is kept. A constant line
can be drawn beside each tag (``--reference val/acc=0.5``: chance).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matplotlib.figure import Figure  # drawn without pyplot: no GUI backend, no global state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_curves(run_dir: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` merged over the run's event files, in step order."""
    files = sorted(run_dir.rglob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no events.out.tfevents.* file below it; give a run's log folder "
                                "(e.g. logs/<task>/<attention>/version_0)")
    curves: dict[str, dict[int, float]] = {tag: {} for tag in tags}
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        present = set(events.Tags()["scalars"])
        for tag in tags:
            if tag in present:
                curves[tag].update({event.step: event.value for event in events.Scalars(tag)})
    missing = [tag for tag, points in curves.items() if not points]
    if missing:
        raise ValueError(f"{run_dir}: no scalar {missing[0]!r} in its event files")
    return {tag: sorted(points.items()) for tag, points in curves.items()}


def plot_curves(curves: dict[str, list[tuple[int, float]]], references: dict[str, float], title: str,
                path: Path) -> None:
    """One panel per tag, the value against the step, and its reference line if given."""
    figure = Figure(figsize=(5.0 * len(curves), 3.6), layout="constrained")
    for index, (tag, points) in enumerate(curves.items()):
        axes = figure.add_subplot(1, len(curves), index + 1)
        steps, values = zip(*points)
        axes.plot(steps, values, marker="o" if len(points) < 40 else None, markersize=3)
        if tag in references:
            axes.axhline(references[tag], color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("step")
        axes.set_ylabel(tag)
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def parse_reference(text: str) -> tuple[str, float]:
    tag, _, value = text.partition("=")
    try:
        return tag, float(value)
    except ValueError:
        message = f"--reference takes TAG=VALUE (e.g. val/acc=0.5), got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's log folder (its event files are below it)")
    parser.add_argument("--tags", nargs="+", default=["val/acc", "train/loss"], help="scalars to draw")
    parser.add_argument("--reference", type=parse_reference, action="append", default=[],
                        help="TAG=VALUE: a dashed line at VALUE on TAG's panel (repeatable)")
    parser.add_argument("--title", default=None, help="figure title (default: the folder)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        curves = read_curves(args.run_dir, args.tags)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plot_curves(curves, dict(args.reference), args.title or str(args.run_dir), args.out)
    for tag, points in curves.items():
        step, value = points[-1]
        print(f"{tag}: {len(points)} points, last {value:.4f} at step {step}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
