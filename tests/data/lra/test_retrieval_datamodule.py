"""LRA Retrieval (AAN pairs): tab-only splitting with quotes kept, two documents, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from src.data.lra.retrieval_datamodule import RetrievalDataModule, read_aan_tsv
from tests.data.lra.fixtures import AAN_FILES, AAN_ROWS, aan_line, write_aan


def decode(ids) -> bytes:
    return bytes((np.asarray(ids, dtype=np.int64) - 1).astype(np.uint8))


def test_rows_become_two_byte_documents_with_quotes_intact(tmp_path):
    dm = RetrievalDataModule(str(write_aan(tmp_path)), cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    assert (dm.vocab_size, dm.num_classes, dm.sequence_fields) == (257, 2, ("input_ids", "input_ids_1"))
    for split, source in (("train", "train"), ("val", "eval"), ("test", "test")):
        dataset = dm.load_split(split)
        rows = AAN_ROWS[source]
        assert len(dataset) == len(rows)
        for i, (label, _, _, text1, text2) in enumerate(rows):
            item = dataset[i]
            assert (decode(item["input_ids"]), decode(item["input_ids_1"])) == (text1, text2)
            assert item["labels"] == int(float(label))
    assert decode(dm.load_split("train")[1]["input_ids"]) == b'An "unbalanced quote'


def test_each_document_is_truncated_on_its_own(tmp_path, caplog):
    dm = RetrievalDataModule(str(write_aan(tmp_path)), max_length=5, batch_size=2,
                             cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert "sequences are longer than max_length=5" in caplog.text
    batch = next(iter(dm.val_dataloader()))  # eval rows: ('"quoted"', 'x'), ('y', "'z'")
    assert decode(batch["input_ids"][0]) == b'"quot'
    assert batch["attention_mask"].sum(1).tolist() == [5, 1]
    assert batch["input_ids_1"].tolist() == [[ord("x") + 1, 0, 0], [ord("'") + 1, ord("z") + 1, ord("'") + 1]]
    assert batch["attention_mask_1"].sum(1).tolist() == [1, 3]
    assert batch["labels"].tolist() == [1, 0]


@pytest.mark.parametrize(("line", "message"), [
    (b"1.0\tA\tB\tonly four\n", "expected 5 tab-separated columns.*got 4"),
    (b"1.0\tA\tB\ttext\twith\ttab\n", "expected 5 .*got 6"),
    (b"2.0\tA\tB\tx\ty\n", "expected the label to be 0 or 1.*'2.0'"),
    (b"yes\tA\tB\tx\ty\n", "expected the label to be 0 or 1.*'yes'"),
    (b"0.0\tA\tB\t\ty\n", "text1 is empty"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.tsv"
    path.write_bytes(aan_line(AAN_ROWS["train"][0]) + aan_line(AAN_ROWS["train"][1]) + line)
    with pytest.raises(ValueError, match=f"{path}:3: {message}"):
        read_aan_tsv(path)


def test_missing_files_name_the_expected_ones_and_the_release(tmp_path):
    folder = write_aan(tmp_path)
    (folder / AAN_FILES["eval"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"new_aan_pairs\.eval\.tsv.*lra_release\.gz.*tsv_data"):
        RetrievalDataModule(str(folder), cache_dir=str(tmp_path / "c")).prepare_data()
