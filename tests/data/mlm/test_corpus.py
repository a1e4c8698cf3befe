"""MLM corpus readers: documents from files, folders, datasets and the built-in Python docs."""

from __future__ import annotations

import sys
from itertools import islice

import pytest

from src.data.mlm.corpus import (
    builtin_documents,
    corpus_files,
    dataset_texts,
    document_split,
    is_hf_dataset,
    iter_documents,
    read_text_file,
)


def test_text_file_documents_by_blank_line_and_by_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nstill first\n\n\nsecond doc\n  \nthird\n")
    assert list(read_text_file(path, "blank_line")) == ["first line still first", "second doc", "third"]
    assert list(read_text_file(path, "line")) == ["first line", "still first", "second doc", "third"]


def test_folder_reads_txt_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from z")
    (tmp_path / "a.txt").write_text("from a")
    (tmp_path / "notes.md").write_text("not read")
    assert list(iter_documents(str(tmp_path))) == ["from a", "from z"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.txt files under"):
        corpus_files(str(empty))
    with pytest.raises(FileNotFoundError, match="'builtin'"):
        corpus_files(str(tmp_path / "missing"))


def test_builtin_corpus_is_english_and_deterministic():
    first = list(islice(builtin_documents(), 120))
    again = list(islice(builtin_documents(), 120))
    assert first == again
    from pydoc_data.topics import topics

    assert first[0] == topics[sorted(topics)[0]].strip()
    text = " ".join(first)
    assert text.count(" the ") > 100  # real English prose
    assert len(corpus_files("builtin")) > 50


def test_dataset_rows_and_missing_datasets_package(tmp_path, monkeypatch):
    rows = [{"text": " one "}, {"text": ""}, {"text": "two"}]
    assert list(dataset_texts(rows, "text", "toy")) == ["one", "two"]
    with pytest.raises(KeyError, match="row 0 has no column 'body'"):
        list(dataset_texts(rows, "body", "toy"))

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install datasets"):
        list(iter_documents(str(folder)))
    assert is_hf_dataset(folder)


def test_document_split_is_stable_and_near_the_fractions():
    texts = [f"document number {i}" for i in range(20000)]
    splits = [document_split(t, 0.05, 0.05) for t in texts]
    assert splits == [document_split(t, 0.05, 0.05) for t in texts]
    # binomial: 20000 * 0.05 = 1000 expected, sd ~31; 6 sd tolerance
    assert abs(splits.count("val") - 1000) < 190 and abs(splits.count("test") - 1000) < 190


def test_hf_dataset_saved_to_disk_is_read_as_documents(tmp_path):
    """Runs where the optional `datasets` package is installed (it is not a requirement)."""
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["first document", "  ", "second document"], "label": [0, 1, 0]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    assert list(iter_documents(str(tmp_path / "single"))) == ["first document", "second document"]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                   "validation": datasets.Dataset.from_dict({"text": ["held out"]})})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert list(iter_documents(str(tmp_path / "dict"), hf_split="validation")) == ["held out"]
    with pytest.raises(KeyError, match="not 'body'"):
        list(iter_documents(str(tmp_path / "single"), text_column="body"))
