"""Tiny LRA data sets in the official layouts, written by the tests themselves.

Each writer returns what it wrote, so tests compare the DataModules' arrays with the
values put in rather than with the code under test.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# (file name, bytes): non-ASCII UTF-8, a raw Latin-1 byte, IMDB's <br /> markup, quotes
IMDB_REVIEWS: dict[str, dict[str, list[bytes]]] = {
    "train": {
        "pos": [b"Great film.", "Caf\u00e9 scenes, na\u00efve & fun".encode(), b"Loved it<br /><br />!",
                b"A \"classic\" \xe9"],
        "neg": [b"Dull.", b"Too long", "\u00bfPor qu\u00e9?".encode(), b"meh"],
    },
    "test": {"pos": [b"Superb", b"ok!"], "neg": [b"Awful \xff", b"no"]},
}

AAN_ROWS: dict[str, list[tuple[str, str, str, bytes, bytes]]] = {
    # label, id1, id2, text1, text2 -- quotes inside texts, including unbalanced ones
    "train": [
        ("1.0", "P01-1001", "P02-1002", b'We cite "prior work" here.', b"Prior work's method"),
        ("0.0", "P03-1003", "P04-1004", b'An "unbalanced quote', b"Plain text about parsing"),
        ("1.0", "P05-1005", "P06-1006", b"Tree kernels", b'""double"" quotes " and \'single\''),
        ("0", "P07-1007", "P08-1008", "Na\u00efve Bayes".encode(), b"SVM"),
    ],
    "eval": [("1.0", "E1", "E2", b'"quoted"', b"x"), ("0.0", "E3", "E4", b"y", b"'z'")],
    "test": [("0.0", "T1", "T2", b"abc", b'd"e'), ("1.0", "T3", "T4", b"f", b"h")],
}
AAN_FILES = {"train": "new_aan_pairs.train.tsv", "eval": "new_aan_pairs.eval.tsv",
             "test": "new_aan_pairs.test.tsv"}


def write_imdb(root: Path) -> Path:
    """``root/aclImdb`` with the reviews of ``IMDB_REVIEWS`` (file names ``<i>_<rating>.txt``)."""
    folder = root / "aclImdb"
    for part, labels in IMDB_REVIEWS.items():
        for label, reviews in labels.items():
            (folder / part / label).mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(reviews):
                (folder / part / label / f"{i}_{8 if label == 'pos' else 2}.txt").write_bytes(text)
    (folder / "train" / "unsup").mkdir()
    (folder / "train" / "unsup" / "0_0.txt").write_bytes(b"unlabelled: must not be read")
    return folder


def aan_line(row: tuple[str, str, str, bytes, bytes]) -> bytes:
    label, id1, id2, text1, text2 = row
    return b"\t".join([label.encode(), id1.encode(), id2.encode(), text1, text2]) + b"\n"


def write_aan(root: Path) -> Path:
    """``root/tsv_data`` with the three AAN files of ``AAN_ROWS``."""
    folder = root / "tsv_data"
    folder.mkdir(parents=True)
    for split, rows in AAN_ROWS.items():
        (folder / AAN_FILES[split]).write_bytes(b"".join(aan_line(row) for row in rows))
    return folder


def cifar_arrays(count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, 10, count).tolist()


def write_cifar(root: Path, per_batch: int = 4, protocol: int = 2) -> tuple[Path, dict[str, tuple]]:
    """``root/cifar-10-batches-py`` with five training batches and a test batch of ``per_batch``
    random images each, pickled as the official dicts; returns the folder and the arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        data, labels = cifar_arrays(per_batch, seed)
        content = {b"batch_label": f"{name} of 6".encode(), b"labels": labels, b"data": data,
                   b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))
        written[name] = (data, labels)
    return folder, written


def write_pathfinder(root: Path, difficulty: str = "curv_contour_length_14", count: int = 20,
                     size: int = 8, seed: int = 0) -> tuple[Path, dict[bytes, int]]:
    """``root/pathfinder32/<difficulty>`` with ``count`` random grey PNGs listed in two metadata
    files, plus one empty and one corrupt PNG listed too; returns the folder and
    ``{pixels.tobytes(): label}`` of the readable images."""
    base = root / "pathfinder32"
    folder = base / difficulty
    (folder / "metadata").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images: dict[bytes, int] = {}
    lines: list[list[str]] = [[], []]
    for i in range(count):
        sub = f"imgs/{i % 2}"
        (folder / sub).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        label = int(rng.integers(0, 2))
        Image.fromarray(pixels).save(folder / sub / f"sample_{i}.png")
        images[pixels.tobytes()] = label
        lines[i % 2].append(f"{sub} sample_{i}.png {i} {label} 1.5 6")
    (folder / "imgs" / "0" / "empty.png").write_bytes(b"")
    (folder / "imgs" / "1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines[0].append("imgs/0 empty.png 98 1 1.5 6")
    lines[1].append("imgs/1 corrupt.png 99 0 1.5 6")
    for k, chunk in enumerate(lines):
        (folder / "metadata" / f"{k}.npy").write_text("\n".join(chunk) + "\n")
    return base, images
