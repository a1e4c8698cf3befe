"""LRA Retrieval: do two ACL Anthology papers cite each other? Two byte sequences per example.

``data_dir`` is the folder with ``new_aan_pairs.{train,eval,test}.tsv`` (``lra_release/tsv_data``
of the LRA release). Each line: ``label<TAB>id1<TAB>id2<TAB>text1<TAB>text2``, no header, the
label a float 0/1. Lines are split on tabs only: quotes are ordinary bytes of the texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from src.data.base_datamodule import SplitArrays
from src.data.lra.byte_tokens import VALUE_VOCAB_SIZE, ByteSequences
from src.data.lra.lra_datamodule import LRADataModule

SPLIT_FILES: dict[str, str] = {
    "train": "new_aan_pairs.train.tsv",
    "val": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}
COLUMNS = ("label", "id1", "id2", "text1", "text2")
LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"


def read_aan_tsv(path: Path) -> SplitArrays:
    """Both documents of every row as byte ids, and the labels.

    Raises ValueError naming the file and 1-based line for a wrong column count, a label
    other than 0/1 or an empty document. Documents are raw bytes, as the task defines them
    (any byte is a token), so nothing is decoded.
    """
    first, second = ByteSequences(), ByteSequences()
    labels: list[int] = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.rstrip(b"\n").removesuffix(b"\r").split(b"\t")
            where = f"{path}:{line_no}"
            if len(fields) != len(COLUMNS):
                raise ValueError(
                    f"{where}: expected {len(COLUMNS)} tab-separated columns ({' '.join(COLUMNS)}), "
                    f"got {len(fields)}"
                )
            labels.append(_label(fields[0], where))
            for name, text, sequences in (("text1", fields[3], first), ("text2", fields[4], second)):
                if not text:
                    raise ValueError(f"{where}: {name} is empty; every pair needs two documents")
                sequences.add(text)
    ids, offsets = first.pack()
    ids_1, offsets_1 = second.pack()
    return {"input_ids": ids, "input_ids_offsets": offsets, "input_ids_1": ids_1,
            "input_ids_1_offsets": offsets_1, "labels": np.asarray(labels, dtype=np.int64)}


def _label(text: bytes, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise ValueError(f"{where}: expected the label to be 0 or 1 (e.g. 1.0), "
                         f"got {text[:30].decode(errors='replace')!r}")
    return int(value)


class RetrievalDataModule(LRADataModule):
    """AAN citation pairs, byte level, 2 classes; each document truncated to ``max_length``.

    Batches: ``input_ids``/``attention_mask`` of the first document, ``input_ids_1``/
    ``attention_mask_1`` of the second, ``labels`` LongTensor[B]. The split ``eval`` file is
    the validation set.

    Args:
        data_dir, max_length: see ``TokenDataModule`` (here with the AAN task's defaults);
            ``max_length`` and ``prepend_cls`` apply to each document.
        **kwargs: ``batch_size``, ``num_workers``, ``prepend_cls``, ``cache_dir`` (see ``TokenDataModule``);
            ``pad_to``, ``mean_over`` (see ``LRADataModule``).
    """

    sequence_fields: ClassVar[tuple[str, ...]] = ("input_ids", "input_ids_1")

    def __init__(
        self,
        data_dir: str = "data/lra/retrieval",
        max_length: int = 4000,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir=data_dir, max_length=max_length, **kwargs)

    @property
    def base_vocab_size(self) -> int:
        return VALUE_VOCAB_SIZE

    @property
    def num_classes(self) -> int:
        return 2

    def source_files(self) -> list[Path]:
        paths = [self.data_dir / name for name in SPLIT_FILES.values()]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"AAN retrieval data not found (missing {', '.join(missing)}). Expected "
                f"{', '.join(SPLIT_FILES.values())} in {self.data_dir}: they are in the LRA release "
                f"({LRA_RELEASE_URL}, folder lra_release/tsv_data/); set data.data_dir to that folder."
            )
        return paths

    def build_split(self, split: str) -> SplitArrays:
        return read_aan_tsv(self.data_dir / SPLIT_FILES[split])
