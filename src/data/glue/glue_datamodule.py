"""GLUE fine-tuning data: one task's TSVs tokenised with the pre-trained run's tokenizer.

A sentence (pair) becomes ``<s> A </s> [B </s>]`` with segment ids 0 for
``<s> A </s>`` and 1 for ``B </s>`` (the collator puts ``<s>``, the
tokenizer's CLS, in front, so the classifier pools it). Pairs longer than
``max_length`` are cut longest-first, so both sentences keep their ``</s>``.
An encoder of one segment (RoBERTa, ``transformers``' YOSO) gets no segment ids.

Stages: ``fit`` trains on train and validates on dev; ``test`` evaluates on
dev again (GLUE's test labels are private); ``predict`` runs the unlabeled
test files for the leaderboard. MNLI has two of each: matched (stage suffix
``''``) and mismatched (``'_mm'``), given as two dataloaders in that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from src.data.base_datamodule import PaddingCollator, SplitArrays, TokenDataModule, pack_sequences
from src.data.glue.tasks import GLUE_HELP, GlueTask, get_task, read_split
from src.data.tokenizer import TextTokenizer, TokenizerVocabulary

DEFAULT_MAX_LENGTH = 512  # without init_from (train.py otherwise sets the pre-trained encoder's length)


class GlueDataModule(TokenizerVocabulary, TokenDataModule):
    """One GLUE task.

    Batches: ``input_ids``, ``attention_mask``, ``segment_ids`` [B, n]; ``labels`` [B] (class ids,
    or float scores for STS-B) for train/dev; ``indices`` [B] (the test file's index) for predict.

    Args:
        task: ``cola``, ``sst2``, ``mrpc``, ``stsb``, ``qqp``, ``mnli``, ``qnli``, ``rte`` or ``wnli``.
        data_dir: the ``glue_data`` folder holding the task folders (``CoLA/``, ``SST-2/``, ...).
        tokenizer: a ``tokenizer.json``; overrides the one stored in ``tokenizer_from``.
        tokenizer_from: a checkpoint of this project holding its tokenizer, or a ``transformers``
            model folder with ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``. ``train.py``
            fills it from ``model.init_args.init_from``, so the pre-trained model is named once.
        max_length: longest input ([CLS] and separators included); the pre-trained encoder's
            length (its position table is loaded too). None: ``train.py`` sets it from
            ``init_from`` (``src.pretrained``); without ``init_from``, 512.
        num_segments: segment embeddings of the encoder. 2 or more: sentence B gets segment id 1
            (BERT); 1 or 0: batches carry no ``segment_ids`` (RoBERTa and ``transformers``' YOSO
            have one segment). None: ``train.py`` sets the encoder's; used alone, 2.
        **kwargs: ``batch_size``, ``num_workers``, ``cache_dir`` (see ``TokenDataModule``); the
            tokenizer's CLS is always prepended, so ``prepend_cls`` is no option here.
    """

    sequence_fields = ("input_ids", "segment_ids")
    fixed_arguments: ClassVar[tuple[str, ...]] = ("prepend_cls",)

    def __init__(
        self,
        task: str,
        data_dir: str = "data/glue",
        tokenizer: str | None = None,
        tokenizer_from: str | None = None,
        max_length: int | None = None,
        num_segments: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.spec: GlueTask = get_task(task)
        max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
        super().__init__(data_dir=data_dir, max_length=max_length, prepend_cls=True, **kwargs)
        self.num_segments = 2 if num_segments is None else num_segments
        if self.num_segments < 0:
            raise ValueError(f"num_segments must be >= 0, got {num_segments}")
        if max_length < 4:
            raise ValueError(f"max_length must be >= 4 (<s>, a token, </s>, a token), got {max_length}")
        self.task = task.lower().replace("-", "")
        self.stage_suffixes = tuple(self.spec.dev)  # ('',) or ('', '_mm') for MNLI
        self.splits = ("train", *(f"val{s}" for s in self.stage_suffixes),
                       *(f"predict{s}" for s in self.stage_suffixes))
        self.tokenizer = self._load_tokenizer(tokenizer, tokenizer_from)

    @staticmethod
    def _load_tokenizer(path: str | None, checkpoint: str | None) -> TextTokenizer:
        if path:
            if checkpoint:
                rank_zero_warn(f"data.tokenizer {path} is used instead of the tokenizer stored in "
                               f"{checkpoint}; "
                               "make sure it is the one the checkpoint was trained with")
            return TextTokenizer.from_file(path)
        if checkpoint and Path(checkpoint).is_dir():
            return folder_tokenizer(Path(checkpoint))
        if checkpoint:
            return TextTokenizer.from_checkpoint(checkpoint)
        raise ValueError(
            "GLUE needs the pre-trained run's tokenizer: give --model.init_args.init_from <MLM checkpoint> "
            "(its tokenizer is used), or --data.init_args.tokenizer <tokenizer.json> to train from scratch"
        )

    def tokenizer_json(self) -> str:
        """Stored in this run's checkpoints too, so a GLUE model can start another (MNLI -> RTE)."""
        return self.tokenizer.to_str()

    # -- the contract --------------------------------------------------------------------------
    @property
    def cls_id(self) -> int:
        return self.tokenizer.cls_id

    @property
    def num_classes(self) -> int:
        """Classes, or 1 output for STS-B's regression."""
        return self.spec.num_outputs

    def task_dir(self) -> Path:
        return self.data_dir / self.spec.name

    def source_files(self) -> list[Path]:
        paths = [self.task_dir() / name for name in self.spec.files()]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"GLUE {self.spec.name} data not found: missing {', '.join(missing)}. "
                                    + GLUE_HELP)
        return paths

    def cache_options(self) -> dict[str, Any]:
        return {"task": self.task, "tokenizer": self.tokenizer.fingerprint(), "max_length": self.max_length}

    # -- tokenising ----------------------------------------------------------------------------
    def build_split(self, split: str) -> SplitArrays:
        if split == "train":
            source, strict = self.spec.train, False
        elif split.startswith("val"):
            source, strict = self.spec.dev[split[len("val"):]], True
        else:
            source, strict = self.spec.test[split[len("predict"):]], True
        path = self.task_dir() / source.file
        examples = read_split(path, self.spec, source, strict)
        ids, segments, cut = self.encode_pairs(examples.texts)
        if cut:
            rank_zero_warn(f"{path}: {cut} of {len(ids)} examples are longer than "
                           f"max_length={self.max_length} "
                           "and were truncated (longest sentence first)")
        input_ids, offsets = pack_sequences(ids, np.int32)
        segment_ids, segment_offsets = pack_sequences(segments, np.int8)
        arrays: SplitArrays = {"input_ids": input_ids, "input_ids_offsets": offsets,
                               "segment_ids": segment_ids, "segment_ids_offsets": segment_offsets}
        if examples.labels is not None:
            arrays["labels"] = examples.labels
        else:
            arrays["indices"] = examples.indices
        return arrays

    def encode_pairs(self, texts: list[tuple[str, ...]]) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """``A </s> [B </s>]`` ids and segment ids per example (no [CLS]: the collator adds it)."""
        sep = self.tokenizer.sep_id
        columns = [
            self.tokenizer.encode_batch([t[i] for t in texts]) for i in range(len(texts[0]) if texts else 0)
        ]
        room = self.max_length - 1 - len(columns)  # [CLS] and one </s> per sentence
        ids, segments, cut = [], [], 0
        for parts in zip(*columns):
            parts = [list(p) for p in parts]
            if sum(map(len, parts)) > room:
                cut += 1
                truncate_longest_first(parts, room)
            row: list[int] = []
            seg: list[int] = []
            for number, part in enumerate(parts):
                row += [*part, sep]
                seg += [number] * (len(part) + 1)
            ids.append(np.asarray(row, dtype=np.int32))
            segments.append(np.asarray(seg, dtype=np.int8))
        return ids, segments, cut

    # -- stages --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """fit: train + dev; validate/test: dev; predict: the test files."""
        dev = [f"val{s}" for s in self.stage_suffixes]
        needed = {"fit": ["train", *dev], "validate": dev, "test": dev,
                  "predict": [f"predict{s}" for s in self.stage_suffixes]}.get(stage or "", list(self.splits))
        for split in needed:
            if split not in self.datasets:
                self.datasets[split] = self.load_split(split)

    def _loaders(self, prefix: str) -> DataLoader | list[DataLoader]:
        loaders = [self.loader(f"{prefix}{s}") for s in self.stage_suffixes]
        return loaders[0] if len(loaders) == 1 else loaders

    def collator(self, split: str = "train") -> PaddingCollator | WithoutSegments:
        """The base's padding; an encoder of one segment (or none) gets no ``segment_ids``."""
        collate = super().collator(split)
        return collate if self.num_segments >= 2 else WithoutSegments(collate)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders("val")

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders("predict")


class WithoutSegments:
    """A collator's batches without ``segment_ids`` (a top-level class: DataLoader workers pickle it)."""

    def __init__(self, collate: PaddingCollator) -> None:
        self.collate = collate

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.collate(batch)
        out.pop("segment_ids", None)
        return out


def folder_tokenizer(folder: Path) -> TextTokenizer:
    """A ``transformers`` folder's tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``)."""
    from src.interop.hf_yoso import load_hf_tokenizer  # the transformers format: a layer above the data

    tokenizer = load_hf_tokenizer(folder)
    if tokenizer is None:
        raise FileNotFoundError(
            f"{folder} holds no tokenizer (tokenizer.json, or vocab.json + merges.txt); give the one the "
            "model was trained with: --data.init_args.tokenizer <tokenizer.json>"
        )
    return TextTokenizer(tokenizer, str(folder))


def truncate_longest_first(parts: list[list[int]], room: int) -> None:
    """Drop tokens from the end of the currently longest part until the parts fit ``room``."""
    while sum(map(len, parts)) > room:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        parts[longest].pop()
