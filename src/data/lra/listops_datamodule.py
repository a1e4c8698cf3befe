"""LRA ListOps DataModule: the official TSVs, or our generator's when they are missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from src.data.base_datamodule import SplitArrays
from src.data.lra.listops import NUM_CLASSES, check_tokenization, encode_split, get_vocab, missing_data_help
from src.data.lra.listops_generator import SPLITS, generate_listops, split_filename
from src.data.lra.lra_datamodule import LRADataModule
from src.data.preparation import exclusive_lock, write_text_atomic

GENERATION_RECORD = "generation.json"
GENERATION_LOCK = ".generate.lock"
GENERATION_KEYS = ("num_train", "num_val", "num_test", "min_tree_length", "max_tree_length",
                   "max_depth", "max_args", "seed")


class ListOpsDataModule(LRADataModule):
    """LRA ListOps (10-way classification of an expression's value).

    Batches: ``input_ids`` LongTensor[B, n] (0 = padding), ``attention_mask`` BoolTensor[B, n]
    and ``labels`` LongTensor[B]. If the TSVs are missing and ``generate_if_missing``, they
    are generated with our LRA-style generator from the ``num_*``, ``*_tree_length``,
    ``max_depth``, ``max_args`` and ``seed`` arguments, and the options are recorded so that
    a folder generated with other options is never reused silently.

    Args:
        tokenization: ``lra`` (the 2020 pipeline the paper ran: brackets dropped; the configs'),
            ``lra_2021`` (LRA's March 2021 fix: ``]`` kept as ``X``) or ``full`` (every token).
        generate_if_missing: generate the three splits when ``data_dir`` has none.
        num_train, num_val, num_test, min_tree_length, max_tree_length, max_depth, max_args,
            seed: generator options (see ``src.data.lra.listops_generator``).
        data_dir, max_length: see ``TokenDataModule`` (here with ListOps' defaults).
        **kwargs: ``batch_size``, ``num_workers``, ``prepend_cls``, ``cache_dir`` (see ``TokenDataModule``);
            ``pad_to``, ``mean_over`` (see ``LRADataModule``).
    """

    def __init__(
        self,
        data_dir: str = "data/lra/listops",
        tokenization: str = "full",
        max_length: int = 2000,
        generate_if_missing: bool = True,
        num_train: int = 96000,
        num_val: int = 2000,
        num_test: int = 2000,
        min_tree_length: int = 500,
        max_tree_length: int = 2000,
        max_depth: int = 10,
        max_args: int = 10,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        check_tokenization(tokenization)
        super().__init__(data_dir=data_dir, max_length=max_length, **kwargs)
        self.tokenization = tokenization
        self.generate_if_missing = generate_if_missing

    @property
    def base_vocab_size(self) -> int:
        return len(get_vocab(self.tokenization)) + 1

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def cache_options(self) -> dict[str, Any]:
        return {"tokenization": self.tokenization}

    def split_path(self, split: str) -> Path:
        """Path of ``basic_<split>.tsv`` in ``data_dir``."""
        return self.data_dir / split_filename(split)

    def source_files(self) -> list[Path]:
        paths = [self.split_path(split) for split in SPLITS]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"ListOps data not found in {self.data_dir} (missing {', '.join(missing)}). "
                + missing_data_help(self.data_dir)
            )
        return paths

    def build_split(self, split: str) -> SplitArrays:
        return encode_split(self.split_path(split), self.tokenization)

    def prepare_sources(self) -> None:
        """Check the TSVs exist; generate all three if none exist and generation is allowed.

        Generation runs once under a lock in ``data_dir``: processes started together wait,
        then find the files and use them (see ``src.data.preparation``).
        """
        if self._present() == len(SPLITS):
            self._check_generation_record()
            return
        if not self.generate_if_missing:
            self._raise_missing()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.data_dir / GENERATION_LOCK, f"generating ListOps data in {self.data_dir}"):
            present = self._present()
            if present == len(SPLITS):  # another process generated them while we waited
                self._check_generation_record()
                return
            if present and not self._interrupted_generation():
                self._raise_missing()
            self._generate()

    def _present(self) -> int:
        return sum(self.split_path(split).is_file() for split in SPLITS)

    def _interrupted_generation(self) -> bool:
        """Some splits are missing but our record says we generated them with these options:
        a generator was killed while renaming its files into place; generating again is safe."""
        record = self.data_dir / GENERATION_RECORD
        return record.is_file() and self._read_generation_record() == self._generation_options()

    def _raise_missing(self) -> None:
        paths = [self.split_path(split) for split in SPLITS]
        missing = ", ".join(str(p) for p in paths if not p.is_file())
        present = ", ".join(str(p) for p in paths if p.is_file())
        if present:
            raise FileNotFoundError(
                f"ListOps data in {self.data_dir} is incomplete: missing {missing} "
                f"but found {present}. Add the missing files from the "
                "same source, or delete the others so that all three are generated together "
                "(splits must be distinct from each other). " + missing_data_help(self.data_dir)
            )
        raise FileNotFoundError(
            f"ListOps data not found in {self.data_dir} (missing {missing}) and "
            "generate_if_missing=False. " + missing_data_help(self.data_dir)
        )

    def _generate(self) -> None:
        """Write the generation record, then the splits (record first: see ``_interrupted_generation``)."""
        hp = self.hparams
        rank_zero_info(
            f"ListOps data not found in {self.data_dir}; generating "
            f"{hp.num_train}/{hp.num_val}/{hp.num_test} train/val/test examples (seed {hp.seed})"
        )
        options = json.dumps(self._generation_options(), indent=2, sort_keys=True) + "\n"
        write_text_atomic(self.data_dir / GENERATION_RECORD, options)
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
            overwrite=False,  # matters only where the lock is unsupported: see generate_listops
        )
        rank_zero_warn(
            f"Generated ListOps data with src.data.lra.listops_generator into {self.data_dir}: "
            f"{hp.num_train} train, {hp.num_val} val, {hp.num_test} test examples "
            f"(seed {hp.seed}, tree length in ({hp.min_tree_length}, {hp.max_tree_length})). "
            "This is not the official LRA file; for that use lra_release/listops-1000."
        )

    def _generation_options(self) -> dict[str, int]:
        return {key: int(self.hparams[key]) for key in GENERATION_KEYS}

    def _read_generation_record(self) -> dict[str, Any]:
        record = self.data_dir / GENERATION_RECORD
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{record} is not valid JSON ({error}); delete it or the whole folder"
            ) from error
        if not isinstance(recorded, dict):
            raise ValueError(f"{record} does not hold an object of options; delete it or the whole folder")
        return recorded

    def _check_generation_record(self) -> None:
        """Data we generated earlier with other options must not be reused silently."""
        if not (self.data_dir / GENERATION_RECORD).is_file():
            return  # official or hand-made files: nothing to compare
        recorded = self._read_generation_record()
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
