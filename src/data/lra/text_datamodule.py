"""LRA Text: IMDB movie reviews as byte sequences, positive vs negative.

``data_dir`` is the Stanford ``aclImdb`` folder (``train|test/pos|neg/*.txt``; ``unsup`` is
not used). Every byte of a review is a token (``byte + 1``; 0 is padding), markup such as
``<br />`` included, as in the LRA pipeline.

Validation: IMDB has no validation split. LRA (and the harness the YOSO paper used) validated
on the test set, which selects the best checkpoint on the data it is then scored on. The
default here holds out a seeded ``val_fraction`` of the training reviews instead;
``val_source: test`` reproduces the LRA practice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from src.data.base_datamodule import SplitArrays
from src.data.lra.byte_tokens import VALUE_VOCAB_SIZE, ByteSequences
from src.data.lra.lra_datamodule import LRADataModule

LABELS: dict[str, int] = {"neg": 0, "pos": 1}
VAL_SOURCES: tuple[str, ...] = ("train", "test")
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"


class TextDataModule(LRADataModule):
    """IMDB reviews, byte level, 2 classes (LRA max length 4000).

    Batches: ``input_ids`` LongTensor[B, n], ``attention_mask`` BoolTensor[B, n], ``labels``
    LongTensor[B] (0 = negative, 1 = positive).

    Args:
        val_source: ``train`` (a seeded ``val_fraction`` of the training reviews) or ``test``
            (the test reviews, as LRA did).
        val_fraction: share of the training reviews held out when ``val_source`` is ``train``.
        seed: seed of that hold-out.
        data_dir, max_length: see ``TokenDataModule`` (here with the IMDB task's defaults).
        **kwargs: ``batch_size``, ``num_workers``, ``prepend_cls``, ``cache_dir`` (see ``TokenDataModule``);
            ``pad_to``, ``mean_over`` (see ``LRADataModule``).
    """

    def __init__(
        self,
        data_dir: str = "data/lra/aclImdb",
        max_length: int = 4000,
        val_source: str = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if val_source not in VAL_SOURCES:
            raise ValueError(f"val_source must be one of {VAL_SOURCES}, got {val_source!r}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        super().__init__(data_dir=data_dir, max_length=max_length, **kwargs)
        self.val_source = val_source
        self.val_fraction = val_fraction
        self.seed = seed

    @property
    def base_vocab_size(self) -> int:
        return VALUE_VOCAB_SIZE

    @property
    def num_classes(self) -> int:
        return len(LABELS)

    def cache_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"val_source": self.val_source}
        if self.val_source == "train":
            options.update(val_fraction=self.val_fraction, seed=self.seed)
        return options

    def reviews(self, part: str) -> list[tuple[Path, int]]:
        """``(file, label)`` of every review of ``train`` or ``test``, in a fixed order."""
        return [
            (path, label)
            for name, label in LABELS.items()
            for path in sorted((self.data_dir / part / name).glob("*.txt"))
        ]

    def source_files(self) -> list[Path]:
        folders = [self.data_dir / part / name for part in ("train", "test") for name in LABELS]
        empty = [str(f) for f in folders if not any(f.glob("*.txt"))]
        if empty:
            raise FileNotFoundError(
                f"IMDB reviews not found: no *.txt in {', '.join(empty)}. Expected the Stanford "
                f"aclImdb folder (train/pos, train/neg, test/pos, test/neg with one review per .txt "
                f"file) at {self.data_dir}: download {IMDB_URL}, extract it and set data.data_dir "
                "to the aclImdb folder."
            )
        return [path for part in ("train", "test") for path, _ in self.reviews(part)]

    def build_split(self, split: str) -> SplitArrays:
        from_test = split == "test" or (split == "val" and self.val_source == "test")
        reviews = self.reviews("test" if from_test else "train")
        if not from_test and self.val_source == "train":
            held_out = self.held_out(len(reviews))
            keep = held_out if split == "val" else np.setdiff1d(np.arange(len(reviews)), held_out)
            reviews = [reviews[i] for i in keep]
        texts = ByteSequences()
        for path, _ in reviews:
            data = path.read_bytes()
            if not data:
                raise ValueError(f"{path}: empty review file; re-extract it from {IMDB_URL}")
            texts.add(data)
        ids, offsets = texts.pack()
        labels = np.array([label for _, label in reviews], dtype=np.int64)
        return {"input_ids": ids, "input_ids_offsets": offsets, "labels": labels}

    def held_out(self, count: int) -> np.ndarray:
        """Sorted indices of the training reviews kept for validation (seeded, at least one)."""
        if count < 2:
            raise ValueError(f"{self.data_dir}/train has {count} review(s); a validation hold-out needs 2+")
        size = min(max(1, round(self.val_fraction * count)), count - 1)
        return np.sort(np.random.default_rng(self.seed).permutation(count)[:size])
