"""The data contract: cache keyed by sources and options, padding collator, [CLS] and links."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.base_datamodule import PaddingCollator, SplitArrays, TokenDataModule, pack_sequences


class DigitsDataModule(TokenDataModule):
    """A toy task: each line of <split>.txt is 'label<TAB>digits'; tokens are digit + 1."""

    builds = 0

    def __init__(self, data_dir: str, max_length: int = 8, prepend_cls: bool = False,
                 cache_dir: str = "", offset: int = 1) -> None:
        super().__init__(data_dir, max_length, batch_size=4, prepend_cls=prepend_cls, cache_dir=cache_dir)
        self.offset = offset

    @property
    def base_vocab_size(self) -> int:
        return 10 + self.offset

    @property
    def num_classes(self) -> int:
        return 2

    def source_files(self) -> list[Path]:
        return [self.data_dir / f"{split}.txt" for split in self.splits]

    def cache_options(self) -> dict:
        return {"offset": self.offset}

    def build_split(self, split: str) -> SplitArrays:
        type(self).builds += 1
        rows = [line.split("\t") for line in (self.data_dir / f"{split}.txt").read_text().splitlines()]
        seqs = [np.array([int(c) + self.offset for c in digits]) for _, digits in rows]
        ids, offsets = pack_sequences(seqs, np.uint8)
        return {"input_ids": ids, "input_ids_offsets": offsets,
                "labels": np.array([int(label) for label, _ in rows])}


def folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.is_dir()]


def write_digits(folder: Path, rows: tuple[str, ...] = ("0\t123", "1\t4567890123", "0\t9")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.txt").write_text("".join(row + "\n" for row in rows))


def test_cache_is_built_once_and_rebuilt_when_sources_or_options_change(tmp_path):
    write_digits(tmp_path / "d")
    DigitsDataModule.builds = 0
    dm = DigitsDataModule(str(tmp_path / "d"), cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    assert DigitsDataModule.builds == 3
    DigitsDataModule(str(tmp_path / "d"), cache_dir=str(tmp_path / "cache")).prepare_data()
    assert DigitsDataModule.builds == 3  # reused
    files = sorted(p.name for p in dm.cache_path().iterdir())
    assert "train.input_ids.npy" in files and all(f.endswith((".npy", ".json")) for f in files)
    np.load(dm.cache_path() / "train.labels.npy", allow_pickle=False)  # plain arrays, no pickle
    DigitsDataModule(str(tmp_path / "d"), cache_dir=str(tmp_path / "cache"), offset=2).prepare_data()
    assert DigitsDataModule.builds == 6  # other options: another cache
    write_digits(tmp_path / "d", ("1\t55",))
    DigitsDataModule(str(tmp_path / "d"), cache_dir=str(tmp_path / "cache")).prepare_data()
    assert DigitsDataModule.builds == 9  # other sources: another cache
    assert len(folders(tmp_path / "cache" / "digits")) == 3  # beside them: one .lock file each


def test_batches_pad_truncate_and_prepend_cls(tmp_path, caplog):
    write_digits(tmp_path / "d")
    dm = DigitsDataModule(str(tmp_path / "d"), max_length=6, prepend_cls=True, cache_dir=str(tmp_path / "c"))
    assert (dm.vocab_size, dm.cls_id, dm.pooling) == (12, 11, "cls")
    dm.prepare_data()
    dm.setup("fit")
    assert re.search(r"1 of 3 train.*max_length=6 \(with \[CLS\]\)", caplog.text)  # a log line
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].tolist() == [
        [11, 2, 3, 4, 0, 0],
        [11, 5, 6, 7, 8, 9],  # 10 digits cut to max_length - 1
        [11, 10, 0, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [[i < n for i in range(6)] for n in (4, 6, 2)]
    assert batch["labels"].tolist() == [0, 1, 0] and batch["labels"].dtype == torch.long
    plain = DigitsDataModule(str(tmp_path / "d"), cache_dir=str(tmp_path / "c"))
    assert (plain.vocab_size, plain.cls_id, plain.pooling) == (11, None, "mean")


def test_collator_pairs_and_float_scores():
    collate = PaddingCollator(max_length=4, sequence_fields=("input_ids", "input_ids_1"))
    batch = collate([
        {"input_ids": np.array([3, 4]), "input_ids_1": np.array([5, 6, 7, 8, 9]), "labels": np.float32(0.5)},
        {"input_ids": np.array([1]), "input_ids_1": np.array([2]), "labels": np.float32(4.0)},
    ])
    assert batch["input_ids"].tolist() == [[3, 4], [1, 0]]
    assert batch["input_ids_1"].tolist() == [[5, 6, 7, 8], [2, 0, 0, 0]]
    assert batch["attention_mask_1"].sum(1).tolist() == [4, 1]
    assert batch["labels"].dtype == torch.float32


def test_missing_sources_and_empty_splits_are_clear_errors(tmp_path):
    dm = DigitsDataModule(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError):
        dm.prepare_data()
    write_digits(tmp_path / "e", ())
    with pytest.raises(ValueError, match="no examples"):
        DigitsDataModule(str(tmp_path / "e"), cache_dir=str(tmp_path / "c")).prepare_data()
    assert not folders(tmp_path / "c" / "digits")  # no half-written cache or staging left behind
    with pytest.raises(ValueError, match="max_length"):
        DigitsDataModule(str(tmp_path / "e"), max_length=1, prepend_cls=True)
