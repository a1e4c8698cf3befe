"""LRA ListOps: TSV reader, tokenisers and a LightningDataModule.

Files are ``basic_{train,val,test}.tsv`` with header ``Source\\tTarget`` (the LRA release,
``lra_release/listops-1000/``, or our generator ``src.data.listops_generator``).

Two tokenisations:

* ``full``: every token (``[MAX [MIN [MED [SM ] ( )`` and digits); the tree is recoverable.
* ``lra``: what the original LRA pipeline fed the model. Its tokenizer dropped every
  non-alphanumeric token, so ``(``, ``)`` and ``]`` vanish and ``[MAX`` becomes ``MAX``
  (a known quirk: the closing brackets, hence the tree structure, are lost).

Id 0 is padding; the vocabulary is fixed per tokenisation, so ``vocab_size`` is known before
any file is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from src.data.listops_generator import SPLITS, generate_listops, split_filename

HEADER = "Source\tTarget"
TOKENIZATIONS: tuple[str, ...] = ("full", "lra")
NUM_CLASSES = 10
PAD_ID = 0

_DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
_OPERATORS: tuple[str, ...] = ("[MAX", "[MIN", "[MED", "[SM")
_BRACKETS: tuple[str, ...] = ("]", "(", ")")
FULL_VOCAB: tuple[str, ...] = _OPERATORS + _BRACKETS + _DIGITS
LRA_VOCAB: tuple[str, ...] = tuple(op[1:] for op in _OPERATORS) + _DIGITS
_VALID_TOKENS = frozenset(FULL_VOCAB)

# Fast encoding: every multi-character token is replaced by one letter, then the string's bytes
# are mapped to ids with bytes.translate (all in C; reading 96k long rows stays quick).
_OP_CODES: dict[str, str] = {"[MAX": "A", "[MIN": "B", "[MED": "C", "[SM": "D"}


def _translate_table(vocab: tuple[str, ...]) -> bytes:
    table = bytearray(256)
    for token_id, token in enumerate(vocab, start=1):
        code = _OP_CODES.get(token) or _OP_CODES.get("[" + token) or token
        table[ord(code)] = token_id
    return bytes(table)


_TABLES: dict[str, bytes] = {
    "full": _translate_table(FULL_VOCAB),
    "lra": _translate_table(LRA_VOCAB),
}
_DELETE: dict[str, bytes] = {"full": b" ", "lra": b" ()]"}


def get_vocab(tokenization: str) -> tuple[str, ...]:
    """Tokens of a tokenisation; token ``vocab[i]`` has id ``i + 1`` (0 is padding)."""
    _check_tokenization(tokenization)
    return FULL_VOCAB if tokenization == "full" else LRA_VOCAB


def encode_tokens(tokens: list[str], tokenization: str = "full") -> np.ndarray:
    """Ids (uint8, no padding) of a validated token list under ``tokenization``."""
    _check_tokenization(tokenization)
    text = " ".join(tokens)
    for token, code in _OP_CODES.items():
        text = text.replace(token, code)
    data = text.encode("ascii").translate(_TABLES[tokenization], _DELETE[tokenization])
    return np.frombuffer(data, dtype=np.uint8).copy()


def _check_tokenization(tokenization: str) -> None:
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")


def _missing_data_help(data_dir: Path) -> str:
    return (
        "Get the ListOps data either from the LRA release archive (lra_release.gz: copy "
        f"lra_release/listops-1000/basic_{{train,val,test}}.tsv into {data_dir}/) or generate "
        f"it: python -m src.data.listops_generator --out {data_dir}"
    )


def iter_listops_tsv(path: str | Path) -> Iterator[tuple[list[str], int]]:
    """Yield (tokens, label) rows of a ListOps TSV, validating every row.

    Raises ValueError naming the file and 1-based line number for a wrong header, a wrong
    column count, a label that is not an integer 0-9, or an unknown token.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ListOps file {path} not found. " + _missing_data_help(path.parent)
        )
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        if header != HEADER:
            raise ValueError(f"{path}:1: expected the header {HEADER!r}, got {header[:50]!r}")
        for line_no, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise ValueError(
                    f"{path}:{line_no}: expected 2 tab-separated columns (Source, Target), "
                    f"got {len(parts)}"
                )
            source, label_text = parts
            label_text = label_text.strip()
            if len(label_text) != 1 or label_text not in _DIGITS:
                raise ValueError(
                    f"{path}:{line_no}: expected Target to be an integer 0-9, got {label_text!r}"
                )
            tokens = source.split()
            if not tokens:
                raise ValueError(f"{path}:{line_no}: expected a non-empty Source expression")
            unknown = set(tokens) - _VALID_TOKENS
            if unknown:
                raise ValueError(
                    f"{path}:{line_no}: unknown token {min(unknown)!r}; expected one of "
                    f"{' '.join(FULL_VOCAB)}"
                )
            yield tokens, int(label_text)


def read_listops_tsv(path: str | Path) -> list[tuple[list[str], int]]:
    """All (tokens, label) rows of a ListOps TSV (see ``iter_listops_tsv`` for the checks)."""
    return list(iter_listops_tsv(path))


class ListOpsDataset(Dataset):
    """Token ids of many examples in one flat uint8 buffer (compact, cheap to send to workers)."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
        if len(offsets) != len(labels) + 1:
            raise ValueError("offsets must have one more entry than labels")
        self.tokens = tokens
        self.offsets = offsets
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]], int(self.labels[index])


class ListOpsCollator:
    """Pads a batch to its longest sequence (capped at ``max_length``) with id 0."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __call__(self, batch: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        lengths = np.array([min(len(ids), self.max_length) for ids, _ in batch], dtype=np.int64)
        width = int(lengths.max()) if len(batch) else 0
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        for row, ((ids, _), n) in enumerate(zip(batch, lengths)):
            input_ids[row, :n] = ids[:n]
        attention_mask = np.arange(width)[None, :] < lengths[:, None]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.tensor([label for _, label in batch], dtype=torch.long),
        }


def load_split(path: str | Path, tokenization: str, max_length: int) -> tuple[ListOpsDataset, int]:
    """Read, tokenise and truncate one split; returns the dataset and how many were truncated."""
    chunks: list[np.ndarray] = []
    labels: list[int] = []
    truncated = 0
    for tokens, label in iter_listops_tsv(path):
        ids = encode_tokens(tokens, tokenization)
        if len(ids) > max_length:
            ids = ids[:max_length]
            truncated += 1
        chunks.append(ids)
        labels.append(label)
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
    return ListOpsDataset(flat, offsets, np.asarray(labels, dtype=np.int64)), truncated


GENERATION_RECORD = "generation.json"
GENERATION_KEYS = ("num_train", "num_val", "num_test", "min_tree_length", "max_tree_length",
                   "max_depth", "max_args", "seed")


class ListOpsDataModule(pl.LightningDataModule):
    """LRA ListOps (10-way classification of an expression's value).

    Batches are dicts: ``input_ids`` LongTensor[B, n] (0 = padding), ``attention_mask``
    BoolTensor[B, n] (True = real token) and ``labels`` LongTensor[B]; n is the longest
    sequence in the batch. Examples longer than ``max_length`` tokens are truncated (their
    first ``max_length`` tokens are kept) and counted in a warning. If the TSVs are missing and
    ``generate_if_missing``, ``prepare_data`` generates them with our LRA-style generator using
    the ``num_*``, ``*_tree_length``, ``max_depth``, ``max_args`` and ``seed`` arguments.
    """

    def __init__(
        self,
        data_dir: str = "data/lra/listops",
        tokenization: str = "full",
        max_length: int = 2000,
        batch_size: int = 32,
        num_workers: int = 0,
        generate_if_missing: bool = True,
        num_train: int = 96000,
        num_val: int = 2000,
        num_test: int = 2000,
        min_tree_length: int = 500,
        max_tree_length: int = 2000,
        max_depth: int = 10,
        max_args: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_tokenization(tokenization)
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.tokenization = tokenization
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.generate_if_missing = generate_if_missing
        self.datasets: dict[str, ListOpsDataset] = {}
        self.collate = ListOpsCollator(max_length)

    @property
    def vocab_size(self) -> int:
        """Number of ids including padding (0); known before ``setup``."""
        return len(get_vocab(self.tokenization)) + 1

    @property
    def num_classes(self) -> int:
        """Ten classes: the value 0-9 of the expression."""
        return NUM_CLASSES

    def split_path(self, split: str) -> Path:
        """Path of ``basic_<split>.tsv`` in ``data_dir``."""
        return self.data_dir / split_filename(split)

    def prepare_data(self) -> None:
        """Check the TSVs exist; generate all three if none exist and generation is allowed."""
        paths = {split: self.split_path(split) for split in SPLITS}
        present = [p for p in paths.values() if p.is_file()]
        if len(present) == len(paths):
            self._check_generation_record()
            return
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if present:
            raise FileNotFoundError(
                f"ListOps data in {self.data_dir} is incomplete: missing {', '.join(missing)} "
                f"but found {', '.join(str(p) for p in present)}. Add the missing files from the "
                "same source, or delete the others so that all three are generated together "
                "(splits must be distinct from each other). " + _missing_data_help(self.data_dir)
            )
        if not self.generate_if_missing:
            raise FileNotFoundError(
                f"ListOps data not found in {self.data_dir} (missing {', '.join(missing)}) and "
                "generate_if_missing=False. " + _missing_data_help(self.data_dir)
            )
        hp = self.hparams
        rank_zero_info(
            f"ListOps data not found in {self.data_dir}; generating "
            f"{hp.num_train}/{hp.num_val}/{hp.num_test} train/val/test examples (seed {hp.seed})"
        )
        generate_listops(
            self.data_dir,
            num_train=hp.num_train,
            num_val=hp.num_val,
            num_test=hp.num_test,
            min_length=hp.min_tree_length,
            max_length=hp.max_tree_length,
            max_depth=hp.max_depth,
            max_args=hp.max_args,
            seed=hp.seed,
        )
        record = self.data_dir / GENERATION_RECORD
        record.write_text(json.dumps(self._generation_options(), indent=2, sort_keys=True) + "\n")
        rank_zero_warn(
            f"Generated ListOps data with src.data.listops_generator into {self.data_dir}: "
            f"{hp.num_train} train, {hp.num_val} val, {hp.num_test} test examples "
            f"(seed {hp.seed}, tree length in ({hp.min_tree_length}, {hp.max_tree_length})). "
            "This is not the official LRA file; for that use lra_release/listops-1000."
        )

    def _generation_options(self) -> dict[str, int]:
        return {key: int(self.hparams[key]) for key in GENERATION_KEYS}

    def _check_generation_record(self) -> None:
        """Data we generated earlier with other options must not be reused silently."""
        record = self.data_dir / GENERATION_RECORD
        if not record.is_file():
            return  # official or hand-made files: nothing to compare
        try:
            recorded = json.loads(record.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{record} is not valid JSON ({error}); delete it or the whole folder"
            ) from error
        wanted = self._generation_options()
        differing = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
        if differing:
            shown = ", ".join(
                f"{k}: folder has {old}, config asks {new}" for k, (old, new) in differing.items()
            )
            raise ValueError(
                f"ListOps data in {self.data_dir} was generated with other options ({shown}). "
                "Delete the folder to regenerate it, or set data_dir to another folder."
            )

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the splits ``stage`` needs (all of them for ``None``)."""
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage or "", SPLITS)
        truncated: dict[str, int] = {}
        for split in needed:
            if split in self.datasets:
                continue
            dataset, n_truncated = load_split(
                self.split_path(split), self.tokenization, self.max_length
            )
            self.datasets[split] = dataset
            if n_truncated:
                truncated[split] = n_truncated
        if truncated:
            counts = ", ".join(f"{n} of {len(self.datasets[s])} {s}" for s, n in truncated.items())
            rank_zero_warn(
                f"ListOps ({self.tokenization} tokens): truncated {counts} examples to "
                f"max_length={self.max_length} tokens; their labels may depend on the cut part. "
                "Raise max_length (LRA-length trees have up to ~6000 'full' tokens but under "
                "2000 'lra' tokens) or use tokenization='lra'."
            )

    def _dataset(self, split: str) -> ListOpsDataset:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not loaded; call setup() first")
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Test split, in file order, for prediction."""
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the data is fully determined by the hyperparameters and files."""
        return {}
