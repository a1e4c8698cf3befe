"""Subword tokenizers for MLM and GLUE, built on the ``tokenizers`` library (no hand-written splitting).

A tokenizer is a ``tokenizer.json``: one exported by a model's owner (e.g. a
RoBERTa byte-level BPE) or one we train on a corpus::

    python -m src.data.tokenizer train --corpus builtin --out data/mlm/tokenizer.json
    python -m src.data.tokenizer train --corpus data/mlm/corpus --kind wordpiece --vocab-size 30522 --out ...

``TextTokenizer`` finds the five special tokens by name in either family
(``<s> </s> <pad> <mask> <unk>`` or ``[CLS] [SEP] [PAD] [MASK] [UNK]``) and
encodes text without the file's own post-processor: the DataModules add the
boundary tokens themselves, so any tokenizer.json gives the same layout.
A trained MLM run stores the JSON string in its checkpoint (``TOKENIZER_KEY``)
so fine-tuning finds the very same vocabulary through ``init_from``.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

TOKENIZER_KEY = "tokenizer_json"
"""Checkpoint entry holding the tokenizer JSON (a str: safe under ``weights_only=True``)."""

KINDS: tuple[str, ...] = ("bpe", "wordpiece")
ROLES: tuple[str, ...] = ("cls", "sep", "pad", "mask", "unk")
SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "bpe": {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "mask": "<mask>", "unk": "<unk>"},
    "wordpiece": {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"},
}


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids of its special tokens.

    Attributes: ``cls_id`` (``<s>``/``[CLS]``, starts a block or a sentence pair),
    ``sep_id`` (``</s>``/``[SEP]``), ``pad_id``, ``mask_id``, ``unk_id``, ``vocab_size``
    and ``special_ids`` (never masked, never drawn as random replacements).
    """

    def __init__(self, tokenizer: Tokenizer, source: str = "tokenizer") -> None:
        self.tokenizer = tokenizer
        self.source = source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        ids: dict[str, int] = {}
        for role in ROLES:
            names = [family[role] for family in SPECIAL_TOKENS.values()]
            found = [vocab[name] for name in names if name in vocab]
            if not found:
                raise ValueError(
                    f"{source} has no {role} token (looked for {' or '.join(names)}); "
                    "train one with `python -m src.data.tokenizer train` or add the token"
                )
            ids[role] = found[0]
        self.cls_id, self.sep_id, self.pad_id = ids["cls"], ids["sep"], ids["pad"]
        self.mask_id, self.unk_id = ids["mask"], ids["unk"]
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if max(ids.values()) >= self.vocab_size:
            raise ValueError(
                f"{source}: special token ids {ids} exceed the vocabulary size {self.vocab_size}"
            )
        self.special_ids = tuple(sorted(set(ids.values())))

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {path} does not exist; give a tokenizer.json (e.g. exported by a "
                "model's owner) or train one: python -m src.data.tokenizer train --corpus ... --out ..."
            )
        try:
            return cls(Tokenizer.from_file(str(path)), str(path))
        except Exception as error:
            if isinstance(error, ValueError) and str(path) in str(error):
                raise
            raise ValueError(f"{path} is not a tokenizers JSON file ({error})") from error

    @classmethod
    def from_str(cls, text: str, source: str = "tokenizer JSON") -> TextTokenizer:
        return cls(Tokenizer.from_str(text), source)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TextTokenizer:
        """The tokenizer a run of this project stored in its checkpoint (MLM pre-training, GLUE)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        text = checkpoint.get(TOKENIZER_KEY) if isinstance(checkpoint, dict) else None
        if not isinstance(text, str):
            raise ValueError(
                f"{path} holds no tokenizer ('{TOKENIZER_KEY}'); it was not saved by an MLM or GLUE run "
                "of this project. Give the tokenizer file instead: "
                "--data.init_args.tokenizer <tokenizer.json>"
            )
        return cls.from_str(text, f"the tokenizer stored in {path}")

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def fingerprint(self) -> str:
        """Hash of the JSON: a different vocabulary must never reuse another's token cache."""
        return hashlib.sha256(self.to_str().encode()).hexdigest()[:16]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (the caller places the boundaries)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


class TokenizerVocabulary:
    """The DataModule contract's vocabulary, read from ``self.tokenizer`` (GLUE and MLM share it).

    Listed before ``TokenDataModule`` in a DataModule's bases, so these win over its defaults.
    """

    tokenizer: TextTokenizer

    @property
    def base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id


def store_tokenizer(checkpoint: dict, datamodule: object) -> None:
    """Put the datamodule's tokenizer JSON into a checkpoint being saved (if the data has one)."""
    tokenizer_json = getattr(datamodule, "tokenizer_json", None)
    if callable(tokenizer_json):
        checkpoint[TOKENIZER_KEY] = tokenizer_json()


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 8000,
                    min_frequency: int = 2) -> TextTokenizer:
    """Train a byte-level BPE (RoBERTa style) or a lower-cased WordPiece (BERT style) on ``texts``."""
    if kind not in KINDS:
        raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
    specials = list(SPECIAL_TOKENS[kind].values())
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size must exceed the {len(specials)} special tokens, got {vocab_size}")
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False,
        )
    tokenizer.train_from_iterator(_batched(texts), trainer=trainer)
    return TextTokenizer(tokenizer, f"a {kind} tokenizer trained here")


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main(argv: list[str] | None = None) -> None:
    """``python -m src.data.tokenizer train --corpus <file|folder|dataset|builtin> --out tokenizer.json``."""
    from src.data.mlm.corpus import DOCUMENT_MODES, iter_documents

    parser = argparse.ArgumentParser(prog="python -m src.data.tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on a corpus and write its tokenizer.json")
    train.add_argument("--corpus", default="builtin",
                       help="a text file, a folder of .txt files, an HF dataset saved to disk, or 'builtin'")
    train.add_argument("--out", required=True, help="where to write tokenizer.json")
    train.add_argument("--kind", choices=KINDS, default="bpe")
    train.add_argument("--vocab-size", type=int, default=8000)
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--documents", choices=DOCUMENT_MODES, default="blank_line",
                       help="text files: one document per blank-line-separated block, or per line")
    train.add_argument("--text-column", default="text", help="HF datasets: the column holding the text")
    args = parser.parse_args(argv)
    texts = iter_documents(args.corpus, documents=args.documents, text_column=args.text_column)
    tokenizer = train_tokenizer(texts, args.kind, args.vocab_size, args.min_frequency)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.tokenizer.save(str(out))
    print(f"wrote {out}: {args.kind}, {tokenizer.vocab_size} tokens")


if __name__ == "__main__":
    main()
