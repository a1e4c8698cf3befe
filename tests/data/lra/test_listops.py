"""Tests for the ListOps generator, reader, tokenisers and DataModule (small sizes, fast)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.lra.listops import (
    FULL_VOCAB,
    LRA_VOCAB,
    encode_tokens,
    get_vocab,
    read_listops_tsv,
)
from src.data.lra.listops_datamodule import ListOpsDataModule
from src.data.lra.listops_generator import generate_listops, main, tree_to_source

SMALL = {"num_train": 300, "num_val": 60, "num_test": 60, "min_length": 10, "max_length": 60}
PARENS = {"(", ")"}


# --- independent evaluators (no code shared with the generator) ---------------------------


def _apply(op: str, args: list[int]) -> int:
    return {
        "[MAX": max,
        "[MIN": min,
        "[MED": lambda a: int(np.median(a)),
        "[SM": lambda a: sum(a) % 10,
    }[op](args)


def stack_eval(tokens: list[str]) -> int:
    """Evaluate with a stack of open operator frames; parentheses are ignored."""
    stack: list[tuple[str, list[int]]] = []
    result: list[int] = []
    for tok in tokens:
        if tok in PARENS:
            continue
        if tok.startswith("["):
            stack.append((tok, []))
        elif tok == "]":
            op, args = stack.pop()
            (stack[-1][1] if stack else result).append(_apply(op, args))
        else:
            (stack[-1][1] if stack else result).append(int(tok))
    assert not stack and len(result) == 1, tokens
    return result[0]


def strict_parse(tokens: list[str]) -> int:
    """Recursive descent over the exact grammar, parentheses included; returns the value.

    node := digit | "(" * (k + 1) OP (node ")") * k "]" ")"   with k >= 1
    """

    def node(i: int) -> tuple[int, int]:
        if tokens[i].isdigit():
            return int(tokens[i]), i + 1
        opens = 0
        while tokens[i] == "(":
            opens += 1
            i += 1
        op = tokens[i]
        assert op in {"[MAX", "[MIN", "[MED", "[SM"} and opens >= 2, (op, opens)
        i += 1
        args = []
        for _ in range(opens - 1):
            value, i = node(i)
            assert tokens[i] == ")"
            args.append(value)
            i += 1
        assert tokens[i : i + 2] == ["]", ")"]
        return _apply(op, args), i + 2

    value, end = node(0)
    assert end == len(tokens)
    return value


def _rows(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines[1:]]


@pytest.fixture(scope="module", params=["lra", "tokens"])
def generated(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"gen_{request.param}")
    generate_listops(out, seed=0, length_unit=request.param, progress=False, **SMALL)
    return request.param, out


# --- generator -----------------------------------------------------------------------------


def test_serialisation_of_hand_made_trees() -> None:
    assert tree_to_source(("MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"  # the LRA example
    src = tree_to_source(("SM", [1, ("MIN", [3, 4]), 5]))
    assert src == "( ( ( ( [SM 1 ) ( ( ( [MIN 3 ) 4 ) ] ) ) 5 ) ] )"
    assert stack_eval(src.split()) == strict_parse(src.split()) == 9


def test_header_and_sizes(generated) -> None:
    _, out = generated
    for split, n in (("train", 300), ("val", 60), ("test", 60)):
        path = out / f"basic_{split}.tsv"
        assert path.read_bytes().startswith(b"Source\tTarget\n")
        assert len(_rows(path)) == n


def test_labels_match_independent_evaluators(generated) -> None:
    _, out = generated
    for split in ("train", "val", "test"):
        for source, target in _rows(out / f"basic_{split}.tsv"):
            tokens = source.split()
            assert stack_eval(tokens) == strict_parse(tokens) == int(target), source


def test_lengths_strictly_within_limits(generated) -> None:
    unit, out = generated
    for split in ("train", "val", "test"):
        for source, _ in _rows(out / f"basic_{split}.tsv"):
            tokens = source.split()
            n = len(tokens) if unit == "tokens" else sum(t not in PARENS for t in tokens)
            assert SMALL["min_length"] < n < SMALL["max_length"]


def test_examples_distinct_within_and_across_splits(generated) -> None:
    _, out = generated
    splits = ("train", "val", "test")
    sources = [s for split in splits for s, _ in _rows(out / f"basic_{split}.tsv")]
    assert len(set(sources)) == len(sources) == 420


def test_deterministic_given_seed(tmp_path: Path) -> None:
    small = dict(SMALL, num_train=50, num_val=10, num_test=10)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_listops(tmp_path / name, seed=seed, progress=False, **small)
    for split in ("train", "val", "test"):
        a, b, c = ((tmp_path / d / f"basic_{split}.tsv").read_bytes() for d in "abc")
        assert a == b
        assert a != c


def test_generator_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_length"):
        generate_listops(tmp_path, 1, 1, 1, min_length=10, max_length=11, progress=False)
    with pytest.raises(ValueError, match="length_unit"):
        generate_listops(tmp_path, 1, 1, 1, length_unit="chars", progress=False)
    with pytest.raises(RuntimeError, match="distinct"):  # only 10 one-digit trees exist
        generate_listops(tmp_path, 20, 0, 0, min_length=0, max_length=2, progress=False)
    assert not list(tmp_path.iterdir())  # no partial files left behind


def test_cli_writes_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    args = [
        "--out",
        str(tmp_path),
        "--num-train",
        "5",
        "--num-val",
        "2",
        "--num-test",
        "2",
        "--min-length",
        "10",
        "--max-length",
        "60",
        "--no-progress",
    ]
    main(args)
    assert len(_rows(tmp_path / "basic_val.tsv")) == 2
    with pytest.raises(SystemExit):
        main(args)


# --- reader and tokenisation ---------------------------------------------------------------

MAX_2_9 = "( ( ( [MAX 2 ) 9 ) ] )"
GOOD_ROW = f"{MAX_2_9}\t9"
NESTED = "( ( ( [MAX 2 ) ( ( ( [SM 0 ) 3 ) ] ) ) 9 ) ] )"


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ("( ( ( [MAX 2 ) 9 ) ] )\t9\textra", "2 tab-separated columns"),
        ("( ( ( [MAX 2 ) 9 ) ] ) 9", "2 tab-separated columns"),
        ("( ( ( [MAX 2 ) 9 ) ] )\t12", "integer 0-9"),
        ("( ( ( [MAX 2 ) 9 ) ] )\tnine", "integer 0-9"),
        ("( ( ( [FOO 2 ) 9 ) ] )\t9", "unknown token '\\[FOO'"),
        ("\t3", "non-empty"),
    ],
)
def test_reader_rejects_malformed_rows(tmp_path: Path, bad_row: str, expected: str) -> None:
    path = tmp_path / "basic_train.tsv"
    path.write_text(f"Source\tTarget\n{GOOD_ROW}\n{bad_row}\n{GOOD_ROW}\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: .*{expected}"):
        read_listops_tsv(path)


def test_reader_checks_header_and_accepts_crlf(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text(f"source\ttarget\n{GOOD_ROW}\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:1: expected the header"):
        read_listops_tsv(path)
    path.write_bytes(f"Source\tTarget\r\n{GOOD_ROW}\r\n".encode())  # csv.writer line ends
    assert read_listops_tsv(path) == [(MAX_2_9.split(), 9)]


def test_reader_missing_file_says_how_to_get_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lra_release/listops-1000") as info:
        read_listops_tsv(tmp_path / "basic_train.tsv")
    assert "python -m src.data.lra.listops_generator" in str(info.value)


def test_tokenisation_modes() -> None:
    tokens = NESTED.split()
    full = encode_tokens(tokens, "full")
    lra = encode_tokens(tokens, "lra")
    assert [FULL_VOCAB[i - 1] for i in full] == tokens
    assert [LRA_VOCAB[i - 1] for i in lra] == ["MAX", "2", "SM", "0", "3", "9"]
    for ids, mode in ((full, "full"), (lra, "lra")):
        vocab_size = len(get_vocab(mode)) + 1
        assert ids.min() >= 1 and ids.max() < vocab_size
    with pytest.raises(ValueError, match="tokenization"):
        encode_tokens(tokens, "chars")


# --- DataModule ----------------------------------------------------------------------------


def _datamodule(data_dir: Path, **kwargs) -> ListOpsDataModule:
    opts = {
        "num_train": 64,
        "num_val": 20,
        "num_test": 20,
        "min_tree_length": 10,
        "max_tree_length": 60,
        "batch_size": 8,
        "seed": 1,
        "cache_dir": str(data_dir / "cache"),
        **kwargs,
    }
    return ListOpsDataModule(data_dir=str(data_dir), **opts)


def _check_batch(batch: dict[str, torch.Tensor], vocab_size: int, max_length: int) -> None:
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert ids.dtype == torch.long and mask.dtype == torch.bool and labels.dtype == torch.long
    assert ids.shape == mask.shape and ids.shape[0] == labels.shape[0] == 8
    assert ids.shape[1] == int(mask.sum(1).max()) <= max_length  # padded to the longest
    assert torch.equal(ids == 0, ~mask)  # padding exactly where the mask is False
    assert bool(((ids[mask] >= 1) & (ids[mask] < vocab_size)).all())
    assert bool(((labels >= 0) & (labels <= 9)).all())
    assert bool(mask[:, 0].all())  # every example has at least one token


@pytest.mark.parametrize("tokenization", ["full", "lra"])
def test_datamodule_end_to_end(tmp_path: Path, tokenization: str) -> None:
    dm = _datamodule(tmp_path / "listops", tokenization=tokenization)
    assert dm.vocab_size == (18 if tokenization == "full" else 15)  # before setup
    assert dm.num_classes == 10
    with pytest.warns(UserWarning, match="Generated ListOps data .* 64 train"):
        dm.prepare_data()
    dm.prepare_data()  # files exist now: a no-op
    dm.setup(None)
    loaders = (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
    for loader in loaders:
        _check_batch(next(iter(loader)), dm.vocab_size, dm.max_length)
    # validation batches are the file's rows, in order, tokenised
    batch = next(iter(dm.val_dataloader()))
    rows = read_listops_tsv(tmp_path / "listops" / "basic_val.tsv")[:8]
    for i, (tokens, label) in enumerate(rows):
        ids = encode_tokens(tokens, tokenization)
        assert batch["input_ids"][i, : len(ids)].tolist() == ids.tolist()
        assert int(batch["attention_mask"][i].sum()) == len(ids)
        assert int(batch["labels"][i]) == label


def test_datamodule_truncates_with_a_warning(tmp_path: Path, caplog) -> None:
    dm = _datamodule(tmp_path, max_length=16)
    with pytest.warns(UserWarning, match="Generated ListOps"):
        dm.prepare_data()
    dm.setup("fit")
    assert re.search(r"\d+ of 64 train.* longer than max_length=16", caplog.text), caplog.text
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 16


def test_datamodule_missing_data_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="generate_if_missing=False") as info:
        _datamodule(tmp_path, generate_if_missing=False).prepare_data()
    assert "lra_release/listops-1000" in str(info.value)
    (tmp_path / "basic_train.tsv").write_text(f"Source\tTarget\n{GOOD_ROW}\n")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        _datamodule(tmp_path).prepare_data()
    with pytest.raises(ValueError, match="tokenization"):
        ListOpsDataModule(data_dir=str(tmp_path), tokenization="chars", cache_dir=str(tmp_path))


def test_generated_data_with_other_options_is_not_reused(tmp_path):
    options = dict(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), num_train=20, num_val=5,
                   num_test=5, min_tree_length=5,
                   max_tree_length=30, max_depth=3, max_args=3)
    ListOpsDataModule(**options).prepare_data()
    assert (tmp_path / "generation.json").is_file()
    ListOpsDataModule(**options).prepare_data()  # same options: reused
    with pytest.raises(ValueError, match="num_train: folder has 20, config asks 30"):
        ListOpsDataModule(**{**options, "num_train": 30}).prepare_data()
