"""LRA ListOps: the TSV reader and the two tokenisations (the DataModule is in ``listops_datamodule``).

Files are ``basic_{train,val,test}.tsv`` with header ``Source\\tTarget`` (the LRA release,
``lra_release/listops-1000/``, or our generator ``src.data.lra.listops_generator``).

Three tokenisations:

* ``lra``: what the 2020 LRA pipeline fed the model, and so what produced the published
  numbers (the YOSO/Nystromformer harness). Its tokenizer dropped every non-alphanumeric
  token, so ``(``, ``)`` and ``]`` vanish and ``[MAX`` becomes ``MAX`` (a known quirk: the
  closing brackets, hence the tree structure, are lost).
* ``lra_2021``: the Long Range Arena repository's fix of March 2021: ``]`` is kept as the
  token ``X``, parentheses are still dropped; the tree is recoverable.
* ``full``: every token (``[MAX [MIN [MED [SM ] ( )`` and digits).

Id 0 is padding; the vocabulary is fixed per tokenisation, so ``vocab_size`` is known before
any file is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from src.data.base_datamodule import pack_sequences
from src.data.text_decoding import naming_decode_errors

HEADER = "Source\tTarget"
TOKENIZATIONS: tuple[str, ...] = ("lra", "lra_2021", "full")
NUM_CLASSES = 10
PAD_ID = 0

_DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
_OPERATORS: tuple[str, ...] = ("[MAX", "[MIN", "[MED", "[SM")
_BRACKETS: tuple[str, ...] = ("]", "(", ")")
FULL_VOCAB: tuple[str, ...] = _OPERATORS + _BRACKETS + _DIGITS
LRA_VOCAB: tuple[str, ...] = tuple(op[1:] for op in _OPERATORS) + _DIGITS
LRA_2021_VOCAB: tuple[str, ...] = LRA_VOCAB + ("X",)  # "X" is the closing bracket
_VOCABS: dict[str, tuple[str, ...]] = {"full": FULL_VOCAB, "lra": LRA_VOCAB, "lra_2021": LRA_2021_VOCAB}
_VALID_TOKENS = frozenset(FULL_VOCAB)

# Fast encoding: every multi-character token is replaced by one letter, then the string's bytes
# are mapped to ids with bytes.translate (all in C; reading 96k long rows stays quick).
_OP_CODES: dict[str, str] = {"[MAX": "A", "[MIN": "B", "[MED": "C", "[SM": "D"}
_TOKEN_CODES: dict[str, str] = {**_OP_CODES, **{op[1:]: code for op, code in _OP_CODES.items()}, "X": "]"}


def _translate_table(vocab: tuple[str, ...]) -> bytes:
    table = bytearray(256)
    for token_id, token in enumerate(vocab, start=1):
        table[ord(_TOKEN_CODES.get(token, token))] = token_id
    return bytes(table)


_TABLES: dict[str, bytes] = {name: _translate_table(vocab) for name, vocab in _VOCABS.items()}
_DELETE: dict[str, bytes] = {"full": b" ", "lra": b" ()]", "lra_2021": b" ()"}


def get_vocab(tokenization: str) -> tuple[str, ...]:
    """Tokens of a tokenisation; token ``vocab[i]`` has id ``i + 1`` (0 is padding)."""
    check_tokenization(tokenization)
    return _VOCABS[tokenization]


def encode_tokens(tokens: list[str], tokenization: str = "full") -> np.ndarray:
    """Ids (uint8, no padding) of a validated token list under ``tokenization``."""
    check_tokenization(tokenization)
    text = " ".join(tokens)
    for token, code in _OP_CODES.items():
        text = text.replace(token, code)
    data = text.encode("ascii").translate(_TABLES[tokenization], _DELETE[tokenization])
    return np.frombuffer(data, dtype=np.uint8).copy()


def check_tokenization(tokenization: str) -> None:
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")


def missing_data_help(data_dir: Path) -> str:
    return (
        "Get the ListOps data either from the LRA release archive (lra_release.gz: copy "
        f"lra_release/listops-1000/basic_{{train,val,test}}.tsv into {data_dir}/) or generate "
        f"it: python -m src.data.lra.listops_generator --out {data_dir}"
    )


def iter_listops_tsv(path: str | Path) -> Iterator[tuple[list[str], int]]:
    """Yield (tokens, label) rows of a ListOps TSV, validating every row.

    Raises ValueError naming the file and 1-based line number for a wrong header, a wrong
    column count, a label that is not an integer 0-9, or an unknown token.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ListOps file {path} not found. " + missing_data_help(path.parent)
        )
    with naming_decode_errors(path), open(path, encoding="utf-8") as f:
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


def encode_split(path: str | Path, tokenization: str) -> dict[str, np.ndarray]:
    """One split as cache arrays: flat uint8 ``input_ids`` with offsets, and ``labels``."""
    sequences: list[np.ndarray] = []
    labels: list[int] = []
    for tokens, label in iter_listops_tsv(path):
        sequences.append(encode_tokens(tokens, tokenization))
        labels.append(label)
    ids, offsets = pack_sequences(sequences, np.uint8)
    return {"input_ids": ids, "input_ids_offsets": offsets, "labels": np.asarray(labels, dtype=np.int64)}
