"""Masked-LM pre-training data: a streamed corpus packed into fixed blocks, masked anew every batch.

Documents (``src.data.mlm.corpus``) are tokenised once into the offline cache
and packed into blocks of ``max_length`` tokens, each ``<s> ... </s>``, with
``</s>`` also closing every document inside a block (RoBERTa's FULL-SENTENCES
packing: a long document continues in the next block). The tokens are written
to disk while they stream, so a corpus larger than memory is fine.

Masking is dynamic (RoBERTa): each training batch draws a new mask from
torch's RNG (seeded by Lightning's ``seed_everything``, so a run replays).
Validation and test batches use a mask derived from their own tokens, so the
monitored ``val/loss`` compares like with like between evaluations.

The context-free baseline: ``unigram_log_probs`` is the training tokens' unigram
distribution (add-one smoothed over the ids that can be targets). It is the best
predictor that ignores the context; the MLM module scores it on the very masked
positions it scores itself (``val/unigram_loss``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from src.data.base_datamodule import PaddingCollator, SplitArrays, TokenDataModule, fingerprint_files
from src.data.mlm.corpus import DOCUMENT_MODES, corpus_files, document_split, iter_documents
from src.data.preparation import exclusive_lock, remove_stale_staging, staging_path
from src.data.tokenizer import KINDS, TextTokenizer, TokenizerVocabulary, train_tokenizer

IGNORE_INDEX = -100
"""Label of every position that is not a prediction target (cross-entropy's ignore_index)."""
_COUNT_CHUNK = 1 << 24  # ids per bincount pass when counting a split


def pack_blocks(documents: Iterable[Sequence[int]], block_length: int, cls_id: int,
                sep_id: int) -> Iterator[np.ndarray]:
    """Blocks ``[cls] + (block_length - 2 stream tokens) + [sep]``; the stream is each document + ``sep``.

    Every block but the last has exactly ``block_length`` ids; the last holds the rest.
    """
    if block_length < 3:
        raise ValueError(f"block_length must be >= 3 (<s>, a token, </s>), got {block_length}")
    room = block_length - 2
    pending: list[np.ndarray] = []
    count = 0
    for ids in documents:
        pending.append(np.asarray(ids, dtype=np.int64))
        pending.append(np.array([sep_id], dtype=np.int64))
        count += len(ids) + 1
        if count < room:
            continue
        stream = np.concatenate(pending)
        whole = len(stream) // room * room
        for start in range(0, whole, room):
            yield _wrap(stream[start : start + room], cls_id, sep_id)
        pending = [stream[whole:]]
        count = len(stream) - whole
    if count:
        yield _wrap(np.concatenate(pending), cls_id, sep_id)


def _wrap(content: np.ndarray, cls_id: int, sep_id: int) -> np.ndarray:
    return np.concatenate([[cls_id], content, [sep_id]]).astype(np.int64)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Sequence[int],
    mask_id: int,
    replacement_ids: torch.Tensor,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: choose ``probability`` of the real, non-special tokens as targets; of those
    ``mask_replace_prob`` (80 %) become ``mask_id``, ``random_replace_prob`` (10 %) a random id from
    ``replacement_ids``, the rest (10 %) stay.

    Returns ``(masked_ids, labels)`` with ``labels = IGNORE_INDEX`` wherever nothing is predicted.
    The same random numbers are drawn whatever the shares, so a seed gives the same targets.
    """
    check_replacement(mask_replace_prob, random_replace_prob)
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype))
    candidates = attention_mask.bool() & ~special

    def draw(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator) < p

    chosen = candidates & draw(probability)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = chosen & draw(mask_replace_prob)
    rest = 1.0 - mask_replace_prob  # of the targets not masked, the random ones' share:
    to_random = chosen & ~to_mask & draw(random_replace_prob / rest if rest > 0 else 0.0)
    picks = torch.randint(len(replacement_ids), input_ids.shape, generator=generator)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, replacement_ids[picks].to(input_ids.dtype), masked)
    return masked, labels


def check_replacement(mask_replace_prob: float, random_replace_prob: float) -> None:
    """The two shares of the targets must be probabilities that sum to at most 1."""
    if not (0.0 <= mask_replace_prob <= 1.0 and 0.0 <= random_replace_prob <= 1.0
            and mask_replace_prob + random_replace_prob <= 1.0 + 1e-9):
        raise ValueError(f"mask_replace_prob ({mask_replace_prob}) and random_replace_prob "
                         f"({random_replace_prob}) must be in [0, 1] with a sum <= 1 (BERT: 0.8 and 0.1)")


def unigram_log_probs(counts: np.ndarray | torch.Tensor, special_ids: Sequence[int],
                      smoothing: float = 1.0) -> torch.Tensor:
    """Log-probabilities of the smoothed unigram distribution of ``counts`` (one count per id).

    ``p(t) = (c_t + smoothing) / (N + smoothing * V)`` over the ``V`` ids that are not special
    (``N``: their total count); special ids, which are never prediction targets, get ``-inf``.
    ``smoothing=1`` is add-one (Laplace): an id never seen in training still gets a finite loss.
    """
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    targets = torch.ones_like(counts, dtype=torch.bool)
    targets[[i for i in special_ids if i < len(counts)]] = False
    weights = torch.where(targets, counts + smoothing, torch.zeros_like(counts))
    if not weights.sum() > 0:
        raise ValueError("no counts outside the special tokens, and no smoothing: the unigram is undefined")
    return (weights / weights.sum()).log().float()


class MLMCollator:
    """Pads blocks, then masks them (``labels`` hold the original ids of the targets).

    ``fixed=False``: masks drawn from torch's global RNG (training). ``fixed=True``: the mask
    is seeded by the batch's own tokens (evaluation: the same blocks get the same masks).
    """

    def __init__(self, tokenizer: TextTokenizer, max_length: int, probability: float = 0.15,
                 fixed: bool = False, mask_replace_prob: float = 0.8,
                 random_replace_prob: float = 0.1) -> None:
        if not 0.0 < probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {probability}")
        check_replacement(mask_replace_prob, random_replace_prob)
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.padding = PaddingCollator(max_length, tokenizer.pad_id, None, ("input_ids",))
        self.special_ids = tokenizer.special_ids
        self.mask_id = tokenizer.mask_id
        special = set(tokenizer.special_ids)
        self.replacement_ids = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])
        self.probability = probability
        self.fixed = fixed

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = self.padding(batch)
        generator = None
        if self.fixed:
            seed = zlib.crc32(out["input_ids"].numpy().tobytes())
            generator = torch.Generator().manual_seed(seed)
        out["input_ids"], out["labels"] = mask_tokens(
            out["input_ids"], out["attention_mask"], self.special_ids, self.mask_id,
            self.replacement_ids, self.probability, generator, self.mask_replace_prob,
            self.random_replace_prob,
        )
        return out


class MLMDataModule(TokenizerVocabulary, TokenDataModule):
    """Blocks of a text corpus for masked-LM pre-training.

    Batches: ``input_ids`` LongTensor[B, n] (masked), ``attention_mask`` BoolTensor[B, n],
    ``labels`` LongTensor[B, n] (original id at targets, -100 elsewhere).

    Args:
        corpus: ``builtin`` (Python's own documentation, no download), a UTF-8 text file, a
            folder of ``*.txt`` files, or an HF dataset saved to disk (see ``src.data.mlm.corpus``).
        tokenizer: a ``tokenizer.json``; ``None`` trains one on the corpus's training documents
            (``tokenizer_kind``, ``tokenizer_vocab_size``) and caches it under ``cache_dir/tokenizers``.
        documents: text files hold one document per blank-line-separated block or per line.
        text_column, hf_split: the column and split of an HF dataset.
        val_fraction, test_fraction: share of documents (by a hash of their text) held out.
        mlm_probability: share of tokens that are prediction targets (BERT: 0.15).
        mask_replace_prob, random_replace_prob: shares of the targets shown as ``<mask>`` and as a
            random token (BERT: 0.8 and 0.1; the rest are shown unchanged). Kept targets show their
            answer: a model that copies its input beats the unigram baseline without any context
            (by ~0.4 nats at 10 %), so a run that measures context use against ``val/unigram_loss``
            masks every target (1.0 and 0.0, as ``configs/mlm/quickstart.yaml``).
        max_length: block length in tokens, ``<s>`` and ``</s>`` included.
        **kwargs: ``batch_size``, ``num_workers``, ``cache_dir`` (see ``TokenDataModule``); ``corpus``
            is the data source and blocks carry their own ``<s>``, so ``data_dir`` and
            ``prepend_cls`` are no options here.
    """

    fixed_arguments: ClassVar[tuple[str, ...]] = ("data_dir", "prepend_cls")
    data_dir_is_folder: ClassVar[bool] = False  # data_dir is the corpus: a file, a folder or 'builtin'

    def __init__(
        self,
        corpus: str = "builtin",
        tokenizer: str | None = None,
        tokenizer_kind: str = "bpe",
        tokenizer_vocab_size: int = 8000,
        documents: str = "blank_line",
        text_column: str = "text",
        hf_split: str = "train",
        val_fraction: float = 0.02,
        test_fraction: float = 0.02,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        max_length: int = 512,
        **kwargs: Any,
    ) -> None:
        if documents not in DOCUMENT_MODES:
            raise ValueError(f"documents must be one of {DOCUMENT_MODES}, got {documents!r}")
        if tokenizer_kind not in KINDS:
            raise ValueError(f"tokenizer_kind must be one of {KINDS}, got {tokenizer_kind!r}")
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ValueError(f"need 0 < val_fraction, test_fraction and a sum < 1, got {val_fraction}, "
                             f"{test_fraction}")
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (<s>, a token, </s>), got {max_length}")
        super().__init__(data_dir=corpus, max_length=max_length, prepend_cls=False, **kwargs)
        self.corpus = corpus
        self.tokenizer_file = tokenizer
        check_replacement(mask_replace_prob, random_replace_prob)
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self._tokenizer: TextTokenizer | None = None
        self._scratch: Path | None = None
        self._counts: dict[str, np.ndarray] = {}

    # -- the tokenizer -------------------------------------------------------------------------
    @property
    def tokenizer(self) -> TextTokenizer:
        """The given tokenizer.json, or one trained on the corpus (once; cached)."""
        if self._tokenizer is None:
            self._tokenizer = (TextTokenizer.from_file(self.tokenizer_file) if self.tokenizer_file
                               else self._trained_tokenizer())
        return self._tokenizer

    def tokenizer_json(self) -> str:
        """The JSON that checkpoints carry so fine-tuning uses the same vocabulary."""
        return self.tokenizer.to_str()

    def _trained_tokenizer(self) -> TextTokenizer:
        hp = self.hparams
        record = {
            "sources": fingerprint_files(corpus_files(self.corpus)),
            "kind": hp.tokenizer_kind, "vocab_size": hp.tokenizer_vocab_size, "documents": hp.documents,
            "text_column": hp.text_column, "hf_split": hp.hf_split,
            "val_fraction": hp.val_fraction, "test_fraction": hp.test_fraction,
        }
        key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / "tokenizers" / f"{hp.tokenizer_kind}-{hp.tokenizer_vocab_size}-{key}.json"
        if not path.is_file():
            with exclusive_lock(path.with_name(path.name + ".lock"), f"training the tokenizer {path}"):
                if not path.is_file():  # another process may have trained it while we waited
                    self._train_tokenizer_into(path)
        return TextTokenizer.from_file(path)

    def _train_tokenizer_into(self, path: Path) -> None:
        hp = self.hparams
        rank_zero_info(f"Training a {hp.tokenizer_kind} tokenizer ({hp.tokenizer_vocab_size} tokens) on "
                       f"{self.corpus}; cached at {path}")
        trained = train_tokenizer(self._documents("train"), hp.tokenizer_kind, hp.tokenizer_vocab_size)
        staging = staging_path(path)
        try:
            trained.tokenizer.save(str(staging))
            os.replace(staging, path)  # atomic
        finally:
            staging.unlink(missing_ok=True)

    # -- the contract --------------------------------------------------------------------------
    @property
    def num_classes(self) -> None:
        return None

    def source_files(self) -> list[Path]:
        return corpus_files(self.corpus)

    def cache_options(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "tokenizer": self.tokenizer.fingerprint(), "block_length": self.max_length,
            "documents": hp.documents, "text_column": hp.text_column, "hf_split": hp.hf_split,
            "val_fraction": hp.val_fraction, "test_fraction": hp.test_fraction,
        }

    # -- tokenising into the cache -------------------------------------------------------------
    def _documents(self, split: str) -> Iterator[str]:
        hp = self.hparams
        for text in iter_documents(self.corpus, hp.documents, hp.text_column, hp.hf_split):
            if document_split(text, hp.val_fraction, hp.test_fraction) == split:
                yield text

    def _token_streams(self, split: str) -> Iterator[list[int]]:
        batch: list[str] = []
        progress = tqdm(desc=f"tokenising {split}", unit=" docs", leave=False)
        for text in self._documents(split):
            batch.append(text)
            if len(batch) == 1024:
                yield from self.tokenizer.encode_batch(batch)
                progress.update(len(batch))
                batch = []
        if batch:
            yield from self.tokenizer.encode_batch(batch)
            progress.update(len(batch))
        progress.close()

    def _staging_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = staging_path(self.cache_dir / "mlm-staging" / self.cache_key())
        return self._scratch

    def build_split(self, split: str) -> SplitArrays:
        """Pack the split's documents; the ids stream to a scratch file, then are memory-mapped."""
        tok = self.tokenizer
        dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        staging = self._staging_dir()
        staging.mkdir(parents=True, exist_ok=True)
        scratch = staging / f"{split}.ids"
        lengths: list[int] = []
        with open(scratch, "wb") as handle:
            for block in pack_blocks(self._token_streams(split), self.max_length, tok.cls_id, tok.sep_id):
                block.astype(dtype).tofile(handle)
                lengths.append(len(block))
        if not lengths:
            raise ValueError(
                f"the {split} split of the MLM corpus {self.corpus} has no documents "
                f"(val_fraction={self.hparams.val_fraction}, test_fraction={self.hparams.test_fraction}); "
                "use a larger corpus or larger fractions"
            )
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.memmap(scratch, dtype=dtype, mode="r", shape=(int(offsets[-1]),))
        return {"input_ids": ids, "input_ids_offsets": offsets}

    def prepare_data(self) -> None:
        remove_stale_staging(self.cache_dir / "mlm-staging")  # scratch of killed preprocessing
        try:
            super().prepare_data()
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    # -- the context-free baseline -------------------------------------------------------------
    def token_counts(self, split: str = "train") -> np.ndarray:
        """How often each id occurs in ``split``'s blocks (specials included), ``int64[vocab_size]``.

        One pass over the memory-mapped ids (in chunks, so a corpus larger than memory is fine);
        kept for the DataModule's lifetime. Loads the split if ``setup`` did not.
        """
        if split not in self._counts:
            dataset = self.datasets[split] if split in self.datasets else self.load_split(split)
            ids = dataset.arrays["input_ids"]
            vocab = self.vocab_size
            counts = np.zeros(vocab, dtype=np.int64)
            for start in range(0, len(ids), _COUNT_CHUNK):
                counts += np.bincount(np.asarray(ids[start : start + _COUNT_CHUNK]), minlength=vocab)
            self._counts[split] = counts
        return self._counts[split]

    def unigram_log_probs(self, smoothing: float = 1.0) -> torch.Tensor:
        """The best context-free predictor of a masked token: the training split's unigram
        distribution over the ids that can be targets, add-``smoothing`` (``unigram_log_probs``)."""
        return unigram_log_probs(self.token_counts("train"), self.tokenizer.special_ids, smoothing)

    # -- loaders -------------------------------------------------------------------------------
    def collator(self, split: str = "train") -> MLMCollator:  # type: ignore[override]
        """Fresh random masks for training; fixed ones elsewhere, so evaluation is comparable."""
        return MLMCollator(self.tokenizer, self.max_length, self.mlm_probability, fixed=split != "train",
                           mask_replace_prob=self.mask_replace_prob,
                           random_replace_prob=self.random_replace_prob)
