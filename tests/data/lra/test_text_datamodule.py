"""LRA Text (IMDB bytes): the aclImdb layout, byte ids, the validation hold-out, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from src.data.lra.text_datamodule import TextDataModule
from tests.data.lra.fixtures import IMDB_REVIEWS, write_imdb


def module(tmp_path, **options) -> TextDataModule:
    dm = TextDataModule(str(write_imdb(tmp_path)), cache_dir=str(tmp_path / "cache"), **options)
    dm.prepare_data()
    return dm


def texts_of(dataset) -> list[bytes]:
    """Decode ids back to bytes (id - 1), independently of the reader."""
    return [bytes((np.asarray(dataset[i]["input_ids"], dtype=np.int64) - 1).astype(np.uint8))
            for i in range(len(dataset))]


def test_test_split_is_every_review_as_bytes_plus_one(tmp_path):
    dm = module(tmp_path)
    assert (dm.vocab_size, dm.num_classes, dm.pad_id) == (257, 2, 0)
    test = dm.load_split("test")
    expected = [(text, label) for name, label in (("neg", 0), ("pos", 1))
                for text in IMDB_REVIEWS["test"][name]]
    assert list(zip(texts_of(test), test.arrays["labels"].tolist())) == expected
    ids = np.asarray(test[0]["input_ids"]).tolist()
    assert ids[-1] == 0xFF + 1 and min(ids) >= 1  # b"Awful \xff": raw byte 255 -> id 256, nothing is 0
    assert ids[:5] == [ord(c) + 1 for c in "Awful"]


def test_validation_is_a_seeded_holdout_of_train(tmp_path):
    dm = module(tmp_path, val_fraction=0.25, seed=3)
    train, val = dm.load_split("train"), dm.load_split("val")
    all_train = {t for reviews in IMDB_REVIEWS["train"].values() for t in reviews}
    assert (len(train), len(val)) == (6, 2)  # 25 % of 8
    assert set(texts_of(train)) | set(texts_of(val)) == all_train
    assert not set(texts_of(train)) & set(texts_of(val))
    assert "unlabelled: must not be read" not in {t.decode(errors="replace") for t in texts_of(train)}
    again = TextDataModule(dm.data_dir, cache_dir=str(tmp_path / "other"), val_fraction=0.25, seed=3)
    again.prepare_data()
    assert texts_of(again.load_split("val")) == texts_of(val)
    other = TextDataModule(dm.data_dir, cache_dir=str(tmp_path / "cache"), val_fraction=0.25, seed=0)
    other.prepare_data()
    assert other.cache_path() != dm.cache_path()
    assert set(texts_of(other.load_split("val"))) != set(texts_of(val))  # seeds 0 and 3 differ here


def test_lra_practice_validates_on_test(tmp_path):
    dm = module(tmp_path, val_source="test")
    assert texts_of(dm.load_split("val")) == texts_of(dm.load_split("test"))
    assert len(dm.load_split("train")) == 8


def test_batches_come_from_worker_processes(tmp_path, caplog):
    dm = module(tmp_path, num_workers=1, max_length=6)
    dm.setup("test")
    assert "1 of 4 test sequences are longer than max_length=6" in caplog.text
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"].shape == (4, 6)
    assert batch["input_ids"][0].tolist() == [ord(c) + 1 for c in "Awful "]
    assert batch["attention_mask"].sum(1).tolist() == [6, 2, 6, 3]
    assert batch["labels"].tolist() == [0, 0, 1, 1]


def test_missing_and_malformed_data_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aclImdb.*aclImdb_v1\.tar\.gz"):
        TextDataModule(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c")).prepare_data()
    folder = write_imdb(tmp_path)
    empty = folder / "test" / "pos" / "1_9.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty}: empty review"):
        TextDataModule(str(folder), cache_dir=str(tmp_path / "c")).prepare_data()
    with pytest.raises(ValueError, match="val_source"):
        TextDataModule(str(folder), val_source="dev")
