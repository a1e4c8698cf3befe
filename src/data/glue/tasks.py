"""GLUE: the nine tasks' file layouts, a strict TSV reader and the leaderboard label strings.

Reads the standard ``glue_data/<TASK>/`` download as published: tab separated,
quoting disabled (QQP and MNLI hold stray quotes that a CSV reader would pair
across lines), columns found by header name (CoLA's train/dev have no header:
``source label mark sentence``). A malformed row (a field count other than the
header's, an unknown label, an unparsable score) is skipped in train with one
counted warning, and is an error naming the file and line in dev and test.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from src.data.text_decoding import naming_decode_errors

GLUE_HELP = (
    "GLUE is distributed as the folder glue_data/ with one subfolder per task "
    "(CoLA, SST-2, MRPC, STS-B, QQP, "
    "MNLI, QNLI, RTE, WNLI), e.g. made by the download_glue_data.py script linked from gluebenchmark.com. "
    "Set data.init_args.data_dir to the folder that holds the task folders."
)

Column = str | int
"""A header name, or a 0-based position in files without a header (CoLA train/dev)."""


@dataclass(frozen=True)
class Split:
    """One file of a task and where its columns are."""

    file: str
    texts: tuple[Column, ...]
    label: Column | None = None
    header: bool = True
    fields: int | None = None  # expected field count of a file without header
    leaderboard: str | None = None  # test files: the prediction file's name


@dataclass(frozen=True)
class GlueTask:
    """A task: its name (= its folder in glue_data), label strings (``None``: regression), metrics, and
    its files; ``dev`` and ``test`` map a stage suffix (``''``, MNLI also ``'_mm'``) to a file."""

    name: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    train: Split
    dev: dict[str, Split]
    test: dict[str, Split]

    @property
    def num_outputs(self) -> int:
        """Classes, or 1 for the regression task (STS-B)."""
        return len(self.labels) if self.labels else 1

    def files(self) -> list[str]:
        return [self.train.file, *(s.file for s in self.dev.values()), *(s.file for s in self.test.values())]


def _pair(first: str, second: str, label: str, test_leaderboard: str, test_file: str = "test.tsv",
          dev_file: str = "dev.tsv") -> tuple[Split, dict[str, Split], dict[str, Split]]:
    train = Split("train.tsv", (first, second), label)
    return (train, {"": Split(dev_file, (first, second), label)},
            {"": Split(test_file, (first, second), leaderboard=test_leaderboard)})


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
MNLI_LABELS = ("contradiction", "entailment", "neutral")

TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "CoLA", BINARY, ("mcc",),
        train=Split("train.tsv", (3,), 1, header=False, fields=4),
        dev={"": Split("dev.tsv", (3,), 1, header=False, fields=4)},
        test={"": Split("test.tsv", ("sentence",), leaderboard="CoLA.tsv")},
    ),
    "sst2": GlueTask(
        "SST-2", BINARY, ("acc",),
        train=Split("train.tsv", ("sentence",), "label"),
        dev={"": Split("dev.tsv", ("sentence",), "label")},
        test={"": Split("test.tsv", ("sentence",), leaderboard="SST-2.tsv")},
    ),
    "mrpc": GlueTask("MRPC", BINARY, ("f1", "acc"), *_pair("#1 String", "#2 String", "Quality", "MRPC.tsv")),
    "stsb": GlueTask(
        "STS-B", None, ("pearson", "spearman"), *_pair("sentence1", "sentence2", "score", "STS-B.tsv")
    ),
    "qqp": GlueTask(
        "QQP", BINARY, ("acc", "f1"), *_pair("question1", "question2", "is_duplicate", "QQP.tsv")
    ),
    "mnli": GlueTask(
        "MNLI", MNLI_LABELS, ("acc",),
        train=Split("train.tsv", ("sentence1", "sentence2"), "gold_label"),
        dev={"": Split("dev_matched.tsv", ("sentence1", "sentence2"), "gold_label"),
             "_mm": Split("dev_mismatched.tsv", ("sentence1", "sentence2"), "gold_label")},
        test={"": Split("test_matched.tsv", ("sentence1", "sentence2"), leaderboard="MNLI-m.tsv"),
              "_mm": Split("test_mismatched.tsv", ("sentence1", "sentence2"), leaderboard="MNLI-mm.tsv")},
    ),
    "qnli": GlueTask("QNLI", NLI2, ("acc",), *_pair("question", "sentence", "label", "QNLI.tsv")),
    "rte": GlueTask("RTE", NLI2, ("acc",), *_pair("sentence1", "sentence2", "label", "RTE.tsv")),
    "wnli": GlueTask("WNLI", BINARY, ("acc",), *_pair("sentence1", "sentence2", "label", "WNLI.tsv")),
}
INDEX_COLUMNS = ("index", "id")  # test files: the example's index for the leaderboard (QQP calls it id)


def get_task(name: str) -> GlueTask:
    """A task by config name (``cola``, ``sst2``, ...) or GLUE name (``CoLA``, ``SST-2``, ...)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[key]


@dataclass
class Examples:
    """Rows of one file: the text fields, labels (class ids or scores; ``None`` for test) and indices."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray | None
    indices: np.ndarray


def read_split(path: Path, task: GlueTask, split: Split, strict: bool) -> Examples:
    """Read one GLUE file; ``strict`` (dev/test) fails on a malformed row, else it is skipped and counted."""
    csv.field_size_limit(sys.maxsize)
    texts: list[tuple[str, ...]] = []
    labels: list[float | int] = []
    indices: list[int] = []
    skipped: list[str] = []
    advice = "GLUE files are UTF-8: re-download the task (gluebenchmark.com)"
    encoding = "utf-8-sig"  # MRPC's files may start with a BOM
    with naming_decode_errors(path, encoding, advice), open(path, encoding=encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) if split.header else None
        if split.header and header is None:
            raise ValueError(f"{path}: empty file; expected a header row")
        width = len(header) if header is not None else split.fields
        text_at = [_position(c, header, path) for c in split.texts]
        label_at = _position(split.label, header, path) if split.label is not None else None
        index_at = next((header.index(c) for c in INDEX_COLUMNS if header and c in header), None)
        for row in reader:
            line = reader.line_num
            if not row or row == [""]:
                continue
            try:
                if width is not None and len(row) != width:
                    raise ValueError(f"expected {width} tab-separated fields, got {len(row)}")
                label = _label(row[label_at], task) if label_at is not None else None
                index = int(row[index_at]) if index_at is not None else len(indices)
            except ValueError as error:
                if strict:
                    raise ValueError(f"{path}:{line}: malformed row ({error}); GLUE dev/test files must be "
                                     "intact, re-download the task") from None
                skipped.append(str(line))
                continue
            texts.append(tuple(row[i] for i in text_at))
            indices.append(index)
            if label is not None:
                labels.append(label)
    if skipped:
        rank_zero_warn(f"{path}: skipped {len(skipped)} malformed rows (lines {', '.join(skipped[:10])}"
                       f"{' ...' if len(skipped) > 10 else ''})")
    label_array = None
    if split.label is not None:
        label_array = np.asarray(labels, dtype=np.float32 if task.labels is None else np.int64)
    return Examples(texts, label_array, np.asarray(indices, dtype=np.int64))


def _position(column: Column, header: list[str] | None, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise ValueError(f"{path}: the header has no column {column!r} (found {header}); "
                         "is this the file of another task?")
    return header.index(column)


def _label(value: str, task: GlueTask) -> int | float:
    if task.labels is None:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"score {value!r} is not a number") from None
    if value not in task.labels:
        raise ValueError(f"label {value!r} is not one of {list(task.labels)}")
    return task.labels.index(value)


def prediction_strings(task: GlueTask, predictions: np.ndarray) -> list[str]:
    """Leaderboard values: label strings for classes (``entailment``, ``1``), floats for STS-B."""
    if task.labels is None:
        return [f"{float(p):.3f}" for p in predictions]
    return [task.labels[int(p)] for p in predictions]
