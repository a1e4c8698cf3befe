"""Streaming readers of a masked-LM corpus: documents one at a time, never the whole corpus in memory.

A corpus is one of

* ``builtin``: English text every Python install ships, no download: the
  ``pydoc_data.topics`` help texts (sorted by topic) then the module, class and
  function docstrings of the top-level standard-library modules (sorted by name,
  read from source with ``ast``, so no module is imported or run);
* a UTF-8 text file: one document per blank-line-separated block (``blank_line``)
  or per line (``line``);
* a folder of ``*.txt`` files (recursively, sorted by path);
* an HF ``datasets`` dataset saved with ``save_to_disk`` (a folder with
  ``dataset_info.json`` or ``dataset_dict.json``); needs ``pip install datasets``.

Documents are assigned to train/val/test by a hash of their text, so the split
is the same whatever the order or the number of readers.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from src.data.text_decoding import naming_decode_errors

BUILTIN = "builtin"
DOCUMENT_MODES: tuple[str, ...] = ("blank_line", "line")
_HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def builtin_sources() -> list[Path]:
    """The source files the built-in corpus is read from (their fingerprint keys the cache)."""
    import pydoc_data.topics

    return [Path(pydoc_data.topics.__file__), *(path for _, path in _stdlib_sources())]


def _stdlib_sources() -> list[tuple[str, Path]]:
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_"))
    found = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)  # finds, does not import a top-level module
        except (ImportError, ValueError):
            continue
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and Path(origin).is_file():
            found.append((name, Path(origin)))
    return found


def builtin_documents() -> Iterator[str]:
    """pydoc topics, then standard-library docstrings, in a fixed order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield text
    for _, path in _stdlib_sources():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a platform-specific file this Python cannot parse: not English text anyway
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and doc.strip():
                    yield doc.strip()


def read_text_file(path: Path, documents: str = "blank_line") -> Iterator[str]:
    """Documents of one UTF-8 file, streamed line by line."""
    if documents not in DOCUMENT_MODES:
        raise ValueError(f"documents must be one of {DOCUMENT_MODES}, got {documents!r}")
    block: list[str] = []
    advice = "the MLM corpus must be UTF-8 text files (not binary data); convert the file or move it away"
    with naming_decode_errors(path, advice=advice), open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if "\x00" in line:
                raise ValueError(f"{path}:{number}: NUL byte; the MLM corpus must be UTF-8 text")
            line = line.strip()
            if documents == "line":
                if line:
                    yield line
            elif line:
                block.append(line)
            elif block:
                yield " ".join(block)
                block = []
    if block:
        yield " ".join(block)


def text_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.txt files under {folder}; put the corpus there as UTF-8 text files")
    return files


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _HF_MARKERS)


def hf_documents(path: Path, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Rows of an HF dataset on disk (memory-mapped Arrow, so it streams)."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            f"{path} is an HF datasets folder; reading it needs the `datasets` package "
            "(pip install datasets), which this project does not install by default"
        ) from error
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise KeyError(f"{path} has splits {sorted(loaded)}, not {split!r}; set data.init_args.hf_split")
        loaded = loaded[split]
    yield from dataset_texts(loaded, text_column, str(path))


def dataset_texts(rows, text_column: str, source: str) -> Iterator[str]:
    """The non-empty ``text_column`` of each row of a dataset (any iterable of dicts)."""
    names = getattr(rows, "column_names", None)
    if names is not None and text_column not in names:
        raise KeyError(f"{source} has columns {names}, not {text_column!r}; set data.init_args.text_column")
    for index, row in enumerate(rows):
        if text_column not in row:
            raise KeyError(f"{source} row {index} has no column {text_column!r} (columns: {sorted(row)})")
        text = row[text_column]
        if not isinstance(text, str):
            raise TypeError(
                f"{source} row {index}: column {text_column!r} holds {type(text).__name__}, not text"
            )
        text = text.strip()
        if text:
            yield text


def corpus_files(corpus: str) -> list[Path]:
    """The files a corpus reads (for the cache fingerprint); a clear error when it does not exist."""
    if corpus == BUILTIN:
        return builtin_sources()
    path = Path(corpus)
    if path.is_file():
        return [path]
    if is_hf_dataset(path):
        return sorted(p for p in path.rglob("*") if p.is_file())
    if path.is_dir():
        return text_files(path)
    raise FileNotFoundError(
        f"MLM corpus {corpus} does not exist. Give a UTF-8 text file, a folder of *.txt files, an HF "
        f"dataset saved with save_to_disk, or 'builtin' (the Python documentation, no download)"
    )


def iter_documents(corpus: str, documents: str = "blank_line", text_column: str = "text",
                   hf_split: str = "train") -> Iterator[str]:
    """Every document of ``corpus`` in a fixed order."""
    if corpus == BUILTIN:
        yield from builtin_documents()
        return
    path = Path(corpus)
    if is_hf_dataset(path):
        yield from hf_documents(path, text_column, hf_split)
        return
    for file in corpus_files(corpus):
        yield from read_text_file(file, documents)


def document_split(text: str, val_fraction: float, test_fraction: float) -> str:
    """``train``, ``val`` or ``test`` from a stable hash of the text (CRC-32, not Python's salted hash)."""
    bucket = zlib.crc32(text.encode("utf-8")) / 2**32
    if bucket < val_fraction:
        return "val"
    if bucket < val_fraction + test_fraction:
        return "test"
    return "train"
