"""Generator for the LRA ListOps distribution, so the data can be made without the LRA archive.

The sampling follows the official LRA generator (``lra_benchmarks/data/listops.py``):

* a node below ``max_depth`` is an operator with probability ``1 - value_prob`` and a digit
  otherwise; at ``max_depth`` it is always a digit. The official code draws ``r = random()``
  and returns a *value* when ``r > VALUE_P`` with ``VALUE_P = 0.25``, so a value has
  probability 0.75 and an operator 0.25 (``value_prob=0.75`` here). With the reverse
  (values at 0.25) a tree almost never has fewer than 2000 tokens: no data could be made.
* an operator is MIN, MAX, MED (``int(numpy.median)``) or SM (sum mod 10), uniformly, with
  2..``max_args`` arguments (uniform).
* a tree is kept when its length is strictly between ``min_length`` and ``max_length``.
  The official code measures length as digits + 2 per operator (the operator token and its
  ``]``), i.e. every token except parentheses: ``length_unit="lra"`` (the default). With
  ``length_unit="tokens"`` every whitespace-separated token, parentheses included, counts.
* examples are distinct within and across splits (train, then val, then test are filled from
  one stream of distinct trees).

Serialisation matches the official TSV: MAX(2, 9) is ``( ( ( [MAX 2 ) 9 ) ] )``. An operator
with k arguments opens k + 1 parentheses, then the operator token, then each argument followed
by ``)``, then ``]`` and a last ``)``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from src.data.preparation import remove_stale_staging, staging_path

OPERATORS: tuple[str, ...] = ("MIN", "MAX", "MED", "SM")
OPERATOR_TOKENS: dict[str, str] = {op: "[" + op for op in OPERATORS}
END_TOKEN = "]"
OPEN_TOKEN = "("
CLOSE_TOKEN = ")"
HEADER = "Source\tTarget"
SPLITS: tuple[str, ...] = ("train", "val", "test")
LENGTH_UNITS: tuple[str, ...] = ("lra", "tokens")

# A tree is an int (a digit) or a pair (operator name, list of argument trees).
Tree = int | tuple[str, Sequence["Tree"]]


def split_filename(split: str) -> str:
    """File name of a split, as in the LRA release (``basic_<split>.tsv``)."""
    return f"basic_{split}.tsv"


def apply_operator(op: str, args: Sequence[int]) -> int:
    """Value of an operator applied to digit arguments (MED is ``int(numpy.median)``)."""
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "SM":
        return sum(args) % 10
    if op == "MED":
        s = sorted(args)
        mid = len(s) // 2
        # int(numpy.median) truncates the float median; the args are non-negative.
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS}")


def tree_to_tokens(tree: Tree) -> list[str]:
    """Tokens of a tree in the official serialisation (see module docstring)."""
    if isinstance(tree, int):
        if not 0 <= tree <= 9:
            raise ValueError(f"a value must be a digit 0-9, got {tree}")
        return [str(tree)]
    op, args = tree
    if op not in OPERATOR_TOKENS:
        raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS}")
    if len(args) < 1:
        raise ValueError("an operator needs at least one argument")
    tokens = [OPEN_TOKEN] * (len(args) + 1) + [OPERATOR_TOKENS[op]]
    for arg in args:
        tokens.extend(tree_to_tokens(arg))
        tokens.append(CLOSE_TOKEN)
    tokens += [END_TOKEN, CLOSE_TOKEN]
    return tokens


def tree_to_source(tree: Tree) -> str:
    """The ``Source`` column text of a tree, e.g. ``( ( ( [MAX 2 ) 9 ) ] )`` for MAX(2, 9)."""
    return " ".join(tree_to_tokens(tree))


class _TooLong(Exception):
    """Raised to abandon a tree as soon as it reaches ``max_length`` (it would be rejected)."""


class _Sampler:
    """Samples (source, label, length) triples; trees that are too long are abandoned early.

    Abandoning a tree once it reaches ``max_length`` does not change the distribution of the
    kept trees (they are exactly the ones that would pass the filter); it only saves time.
    """

    def __init__(
        self,
        rng: random.Random,
        max_depth: int,
        max_args: int,
        max_length: int,
        value_prob: float,
        length_unit: str,
    ) -> None:
        self._rand = rng.random
        self._max_depth = max_depth
        self._num_arg_choices = max_args - 1  # 2..max_args
        self._max_length = max_length
        self._value_prob = value_prob
        self._count_parens = length_unit == "tokens"
        self._op_tokens = [OPERATOR_TOKENS[op] for op in OPERATORS]
        self._digits = [str(d) for d in range(10)]
        self._tokens: list[str] = []
        self._length = 0

    def sample(self) -> tuple[str, int, int] | None:
        """One tree as (source, value, length), or None if it reached ``max_length``."""
        self._tokens = []
        self._length = 0
        try:
            value = self._node(1)
        except _TooLong:
            return None
        return " ".join(self._tokens), value, self._length

    def _node(self, depth: int) -> int:
        rand = self._rand
        tokens = self._tokens
        if depth >= self._max_depth or rand() < self._value_prob:
            value = int(rand() * 10)
            tokens.append(self._digits[value])
            self._length += 1
            if self._length >= self._max_length:
                raise _TooLong
            return value
        k = 2 + int(rand() * self._num_arg_choices)
        op_index = int(rand() * len(OPERATORS))
        self._length += 2 * k + 4 if self._count_parens else 2
        if self._length >= self._max_length:
            raise _TooLong
        tokens.extend([OPEN_TOKEN] * (k + 1))
        tokens.append(self._op_tokens[op_index])
        args = []
        for _ in range(k):
            args.append(self._node(depth + 1))
            tokens.append(CLOSE_TOKEN)
        tokens.append(END_TOKEN)
        tokens.append(CLOSE_TOKEN)
        return apply_operator(OPERATORS[op_index], args)


def _check_args(
    counts: Sequence[int],
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    value_prob: float,
    length_unit: str,
) -> None:
    if any(n < 0 for n in counts):
        raise ValueError(f"split sizes must be >= 0, got {tuple(counts)}")
    if min_length < 0 or max_length - min_length < 2:
        raise ValueError(
            "need 0 <= min_length and max_length >= min_length + 2 (lengths are kept strictly "
            f"between them), got min_length={min_length}, max_length={max_length}"
        )
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if not 0.0 < value_prob <= 1.0:
        raise ValueError(f"value_prob must be in (0, 1], got {value_prob}")
    if length_unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit must be one of {LENGTH_UNITS}, got {length_unit!r}")


def generate_listops(
    out_dir: Path | str,
    num_train: int = 96000,
    num_val: int = 2000,
    num_test: int = 2000,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    *,
    value_prob: float = 0.75,
    length_unit: str = "lra",
    progress: bool = True,
    overwrite: bool = True,
    max_tries: int | None = None,
) -> dict[str, Path]:
    """Write ``basic_{train,val,test}.tsv`` (header ``Source\\tTarget``) into ``out_dir``.

    Deterministic given the arguments: the same seed gives byte-identical files. The files are
    written under names private to this process (``basic_train.tsv.tmp-<host>-<pid>-<random>``)
    and renamed at the end, so an interrupted run leaves no partial split behind and parallel
    generators never touch each other's files; leftovers of killed generators are removed.
    With ``overwrite=False`` a split that appeared meanwhile is kept (another generator with the
    same arguments wrote the same bytes; keeping its file keeps its modification time, which
    the DataModule's cache key includes). Returns the path of each split.
    """
    counts = (num_train, num_val, num_test)
    _check_args(counts, min_length, max_length, max_depth, max_args, value_prob, length_unit)
    total = sum(counts)
    if max_tries is None:
        max_tries = 1000 * total + 100_000
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    paths = {split: out / split_filename(split) for split in SPLITS}
    tmp_paths = {split: staging_path(path) for split, path in paths.items()}

    sampler = _Sampler(
        random.Random(seed), max_depth, max_args, max_length, value_prob, length_unit
    )
    seen: set[bytes] = set()
    tries = 0
    try:
        with contextlib.ExitStack() as stack:
            files = {
                split: stack.enter_context(open(path, "w", encoding="ascii", newline="\n"))
                for split, path in tmp_paths.items()
            }
            bar = stack.enter_context(
                tqdm(total=total, desc="Generating ListOps", unit="ex", disable=not progress)
            )
            for split, count in zip(SPLITS, counts):
                f = files[split]
                f.write(HEADER + "\n")
                written = 0
                while written < count:
                    if tries >= max_tries:
                        raise RuntimeError(
                            f"gave up after {tries} trees: only {len(seen)} of {total} distinct "
                            f"trees with length in ({min_length}, {max_length}) found; "
                            "relax the length limits or ask for fewer examples"
                        )
                    tries += 1
                    sample = sampler.sample()
                    if sample is None:
                        continue
                    source, value, length = sample
                    if length <= min_length:
                        continue
                    key = hashlib.blake2b(source.encode("ascii"), digest_size=16).digest()
                    if key in seen:
                        continue
                    seen.add(key)
                    f.write(f"{source}\t{value}\n")
                    written += 1
                    bar.update(1)
        # All three files are complete and closed: publish them under their real names.
        for split in SPLITS:
            publish(tmp_paths[split], paths[split], overwrite)
    finally:
        for tmp in tmp_paths.values():
            tmp.unlink(missing_ok=True)
    return paths


def publish(staged: Path, final: Path, overwrite: bool) -> None:
    """Rename ``staged`` to ``final`` atomically; without ``overwrite`` an existing ``final`` wins."""
    if overwrite:
        os.replace(staged, final)
        return
    try:
        os.link(staged, final)  # atomic, and fails instead of replacing
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        os.replace(staged, final)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m src.data.lra.listops_generator --out data/lra/listops``."""
    p = argparse.ArgumentParser(
        description="Generate LRA-style ListOps data (basic_{train,val,test}.tsv)."
    )
    p.add_argument("--out", type=Path, default=Path("data/lra/listops"), help="output folder")
    p.add_argument("--num-train", type=int, default=96000)
    p.add_argument("--num-val", type=int, default=2000)
    p.add_argument("--num-test", type=int, default=2000)
    p.add_argument("--min-length", type=int, default=500, help="kept length is > this")
    p.add_argument("--max-length", type=int, default=2000, help="kept length is < this")
    p.add_argument("--max-depth", type=int, default=10)
    p.add_argument("--max-args", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--value-prob",
        type=float,
        default=0.75,
        help="probability that a node below max depth is a digit (official LRA: 0.75)",
    )
    p.add_argument(
        "--length-unit",
        choices=LENGTH_UNITS,
        default="lra",
        help="'lra': tokens except parentheses (official); 'tokens': every token",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)

    existing = [
        str(args.out / split_filename(s)) for s in SPLITS if (args.out / split_filename(s)).exists()
    ]
    if existing and not args.force:
        p.error(f"refusing to overwrite {', '.join(existing)} (use --force)")
    paths = generate_listops(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
        seed=args.seed,
        value_prob=args.value_prob,
        length_unit=args.length_unit,
        progress=not args.no_progress,
    )
    sizes = (args.num_train, args.num_val, args.num_test)
    for (split, path), n in zip(paths.items(), sizes):
        print(f"wrote {n} {split} examples to {path}")


if __name__ == "__main__":
    main()
