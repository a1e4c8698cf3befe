"""The one data contract every task's DataModule follows.

A task says how to find its source files and how to turn one split into
token arrays; this base does the rest: an offline cache of ``.npy`` arrays
(memory-mapped, never pickle) filled once in ``prepare_data`` with a progress
bar and keyed by a hash of the source files and the preprocessing options, a
token dataset, a padding collator that prepends [CLS] where the task asks for
one, truncation counted in a warning, and the loaders.

The model is linked (by ``train.py``) from ``vocab_size``, ``encoder_length``,
``pad_id``, ``num_classes`` and ``cls_id`` (pooling is ``cls`` exactly when a
CLS id is prepended), so configs never state them twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from src.data.cache_manifest import describe_array, folder_problem, map_split, write_manifest
from src.data.preparation import discard, exclusive_lock, remove_path, remove_stale_staging, staging_path
from src.data.samplers import ResumableLoader, ResumableSampler, ShardSampler
from src.signals import worker_init

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
CACHE_FORMAT = 2  # bump when the on-disk layout of the cache changes (2: manifest.json)

SplitArrays = dict[str, np.ndarray]
"""One split: for each sequence field ``f``, ``f`` (all ids, flat) and ``f + "_offsets"``
(``len + 1`` boundaries); every other array holds one value per example (e.g. ``labels``)."""


def pack_sequences(sequences: Sequence[np.ndarray], dtype: np.dtype | type) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and ``len + 1`` offsets of variable-length sequences (compact, memory-mappable)."""
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    flat = np.concatenate(sequences).astype(dtype, copy=False) if len(sequences) else np.zeros(0, dtype=dtype)
    return flat, offsets


class CacheRepairWarning(UserWarning):
    """A damaged cache folder was found and is being rebuilt (named in the message)."""


def inputs_digest(inputs: dict[str, Any]) -> str:
    """SHA-256 of the cache-key record (its first 16 hex digits name the cache folder)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def fingerprint_files(paths: Sequence[Path]) -> list[list[Any]]:
    """Name, size and modification time of each source file: a change to any of them rebuilds the cache.

    (Hashing every byte of the LRA files would cost seconds on each start; size
    plus nanosecond mtime catches replaced or edited files.)
    """
    rows = []
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        rows.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return rows


class TokenDataset(Dataset):
    """Examples of a cached split: a dict of id arrays (one per sequence field) and scalar fields."""

    def __init__(self, arrays: SplitArrays, sequence_fields: Sequence[str]) -> None:
        self.arrays = arrays
        self.sequence_fields = tuple(sequence_fields)
        self.scalar_fields = tuple(
            k for k in arrays if k not in self.sequence_fields and not k.endswith("_offsets")
        )
        first = self.sequence_fields[0]
        self.length = len(arrays[f"{first}_offsets"]) - 1
        for key in self.scalar_fields:
            if len(arrays[key]) != self.length:
                raise ValueError(f"field {key!r} has {len(arrays[key])} values for {self.length} examples")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {}
        for field in self.sequence_fields:
            offsets = self.arrays[f"{field}_offsets"]
            item[field] = self.arrays[field][offsets[index] : offsets[index + 1]]
        for key in self.scalar_fields:
            item[key] = self.arrays[key][index]
        return item

    def lengths(self, field: str) -> np.ndarray:
        """Length of every example's ``field`` sequence (no [CLS])."""
        return np.diff(self.arrays[f"{field}_offsets"])


def mask_name(field: str) -> str:
    """``input_ids`` -> ``attention_mask``; ``input_ids_1`` -> ``attention_mask_1``."""
    return "attention_mask" + field[len("input_ids"):]


def position_name(field: str) -> str:
    """``input_ids`` -> ``position_ids`` (given only for compacted batches)."""
    return "position_ids" + field[len("input_ids"):]


class PaddingCollator:
    """Pads each sequence field to the batch's longest (after truncation to ``max_length``).

    Fields named ``input_ids*`` get a boolean ``attention_mask*`` (True = real token) and,
    when ``cls_id`` is set, the [CLS] id in front (it counts towards ``max_length``). Other
    sequence fields (e.g. ``segment_ids``) are padded with 0 and shifted the same way.
    Scalar fields become tensors (``labels``: int64 for integer data, float32 for scores).
    ``pad_to``: every batch is padded to this fixed length instead (the LRA harness's arrays).
    ``mask_pad_valued``: a token whose id equals ``pad_id`` is masked wherever it stands (the
    harness's ``mask = ids != 0``, which also hides black pixels of raw pixel tokens).
    ``compact``: drop those masked tokens instead and give each kept token its original index in
    ``position_ids*`` (padded to the batch's most kept tokens): the same model inputs for an
    attention that sees its keys as a set, at the cost of the kept tokens only (Pathfinder: ~50
    lit pixels of 1024). Needs ``mask_pad_valued`` and no [CLS].
    """

    def __init__(self, max_length: int, pad_id: int = 0, cls_id: int | None = None,
                 sequence_fields: Sequence[str] = ("input_ids",), pad_to: int | None = None,
                 mask_pad_valued: bool = False, compact: bool = False) -> None:
        if max_length < 1 + int(cls_id is not None):
            raise ValueError(f"max_length {max_length} leaves no room for a token")
        if compact and (not mask_pad_valued or cls_id is not None):
            raise ValueError("compact drops the tokens masked for their value: it needs mask_pad_valued "
                             "and no [CLS] (whose position 0 would not survive the compaction)")
        if pad_to is not None and pad_to < max_length:
            raise ValueError(f"pad_to={pad_to} is shorter than max_length={max_length}")
        self.max_length = max_length
        self.pad_id = pad_id
        self.cls_id = cls_id
        self.sequence_fields = tuple(sequence_fields)
        self.pad_to = pad_to
        self.mask_pad_valued = mask_pad_valued
        self.compact = compact

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        room = self.max_length - int(self.cls_id is not None)
        lead = int(self.cls_id is not None)
        for field in self.sequence_fields:
            if self.compact:
                out.update(self._compacted(field, batch))
                continue
            is_ids = field.startswith("input_ids")
            lengths = np.array([min(len(item[field]), room) for item in batch], dtype=np.int64)
            width = self.pad_to or int(lengths.max(initial=0)) + lead
            padded = np.full((len(batch), width), self.pad_id if is_ids else 0, dtype=np.int64)
            for row, (item, n) in enumerate(zip(batch, lengths)):
                padded[row, lead : lead + n] = item[field][:n]
            if is_ids:
                if lead:
                    padded[:, 0] = self.cls_id
                mask = np.arange(width)[None, :] < (lengths + lead)[:, None]
                if self.mask_pad_valued:
                    mask &= padded != self.pad_id
                out[mask_name(field)] = torch.from_numpy(mask)
            out[field] = torch.from_numpy(padded)
        for key in batch[0]:
            if key in self.sequence_fields:
                continue
            values = np.asarray([item[key] for item in batch])
            tensor = torch.from_numpy(values)
            out[key] = tensor.float() if tensor.is_floating_point() else tensor.long()
        return out


    def _compacted(self, field: str, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``field``'s unmasked tokens moved to the front, with their original positions."""
        kept = [np.flatnonzero(np.asarray(item[field][: self.max_length]) != self.pad_id) for item in batch]
        width = max(1, max(len(positions) for positions in kept))
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        position_ids = np.zeros((len(batch), width), dtype=np.int64)
        for row, (item, positions) in enumerate(zip(batch, kept)):
            ids[row, : len(positions)] = np.asarray(item[field])[positions]
            position_ids[row, : len(positions)] = positions
        mask = np.arange(width)[None, :] < np.array([len(p) for p in kept])[:, None]
        return {field: torch.from_numpy(ids), mask_name(field): torch.from_numpy(mask),
                position_name(field): torch.from_numpy(position_ids)}


class TokenDataModule(pl.LightningDataModule):
    """Base of every task's DataModule (see the module docstring for the contract).

    Subclasses define ``base_vocab_size`` (ids including padding 0), ``num_classes``
    (``None`` where there are no classes), ``source_files()``, ``build_split(split)``
    and, where preprocessing has options, ``cache_options()``. ``prepare_sources()``
    may create missing sources (ListOps generates them) or raise a clear error.

    A subclass's ``__init__`` lists only its own options (and a base argument whose
    default differs for the task) and passes the rest on with ``**kwargs``: LightningCLI
    follows ``**kwargs`` here, so every key is still in the config. A base argument the
    task sets itself is passed by keyword (hidden from the config) and named in
    ``fixed_arguments`` (kept out of the hyperparameters, so ``cls(**hparams)`` works).

    Args:
        data_dir: the folder with the task's source files.
        max_length: longest sequence the model sees ([CLS] included); longer ones are
            truncated and counted in a warning.
        batch_size: examples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        prepend_cls: put a [CLS] id in front of every sequence (the classifier then pools it).
        cache_dir: where the preprocessed arrays are kept (one folder per source/option hash).
    """

    sequence_fields: ClassVar[tuple[str, ...]] = ("input_ids",)
    splits: ClassVar[tuple[str, ...]] = SPLITS
    pad_id: ClassVar[int] = 0
    fixed_arguments: ClassVar[tuple[str, ...]] = ()
    data_dir_is_folder: ClassVar[bool] = True  # MLM's data_dir is the corpus: a file is fine there

    def __init__(
        self,
        data_dir: str,
        max_length: int,
        batch_size: int = 32,
        num_workers: int = 0,
        prepend_cls: bool = False,
        cache_dir: str = "data/cache",
    ) -> None:
        super().__init__()
        if max_length < 1 + int(prepend_cls):
            raise ValueError(f"max_length must be >= {1 + int(prepend_cls)}, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        # Once for every task: Lightning collects the arguments of this and the subclass's
        # __init__ (its **kwargs included); checkpoints carry them to rebuild the DataModule.
        self.save_hyperparameters(ignore=list(self.fixed_arguments))
        self.data_dir = Path(data_dir)
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.prepend_cls = prepend_cls
        self.cache_dir = Path(cache_dir)
        self.datasets: dict[str, TokenDataset] = {}
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, int] | None = None

    # -- what a task defines -----------------------------------------------------------------
    @property
    def base_vocab_size(self) -> int:
        """Number of ids the task's tokens use, padding (0) included."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        """Labels of a classification task; ``None`` where there are none (MLM)."""
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """The existing source files of every split; a clear FileNotFoundError if any is missing."""
        raise NotImplementedError

    def build_split(self, split: str) -> SplitArrays:
        """Read and tokenise one split (no truncation, no [CLS]: the collator adds those)."""
        raise NotImplementedError

    def cache_options(self) -> dict[str, Any]:
        """Options that change the preprocessed arrays (e.g. the tokenisation)."""
        return {}

    def prepare_sources(self) -> None:
        """Make sure the sources exist (default: check them)."""
        self.source_files()

    # -- the contract the model is linked from -----------------------------------------------
    @property
    def cls_id(self) -> int | None:
        """Id of the [CLS] token put in front of every sequence, or ``None``."""
        return self.base_vocab_size if self.prepend_cls else None

    @property
    def vocab_size(self) -> int:
        """Ids the embedding needs: the task's tokens, padding and [CLS] if prepended."""
        return self.base_vocab_size + int(self.prepend_cls)

    @property
    def encoder_length(self) -> int:
        """The longest input the encoder sees (its ``max_length``): here ``max_length`` itself."""
        return self.max_length

    @property
    def pooling(self) -> str:
        """How a classifier pools: the [CLS] vector when there is one, else the mean of real tokens."""
        return "cls" if self.cls_id is not None else "mean"

    # -- the cache ---------------------------------------------------------------------------
    def check_data_dir(self) -> None:
        """``data_dir`` must be a folder; a file there (e.g. one of the TSVs) gets a clear error."""
        if self.data_dir_is_folder and self.data_dir.exists() and not self.data_dir.is_dir():
            raise NotADirectoryError(
                f"data.init_args.data_dir={self.data_dir} is a file, not a folder; set it to the folder "
                f"that holds {type(self).__name__}'s files (perhaps {self.data_dir.parent})"
            )

    def cache_inputs(self) -> dict[str, Any]:
        """What the arrays are made from: the class, the preprocessing options, the sources' fingerprints."""
        self.check_data_dir()
        return {
            "format": CACHE_FORMAT,
            "task": type(self).__name__,
            "options": self.cache_options(),
            "sources": fingerprint_files(self.source_files()),
        }

    def cache_key(self) -> str:
        """Short hash of ``cache_inputs``: the name of the cache folder."""
        return inputs_digest(self.cache_inputs())[:16]

    def cache_path(self) -> Path:
        return self._cache_folder(self.cache_key())

    def _cache_folder(self, key: str) -> Path:
        return self.cache_dir / type(self).__name__.removesuffix("DataModule").lower() / key

    def _locate_cache(self) -> tuple[Path, dict[str, Any], str]:
        inputs = self.cache_inputs()
        digest = inputs_digest(inputs)
        return self._cache_folder(digest[:16]), inputs, digest

    def prepare_data(self) -> None:
        """Make the sources, then the cache; any number of processes may call this at once."""
        self.check_data_dir()
        self.prepare_sources()
        self.ensure_cache()

    def ensure_cache(self) -> Path:
        """The cache folder, checked by its manifest (sizes and names); built, or rebuilt if damaged."""
        folder, inputs, digest = self._locate_cache()
        remove_stale_staging(folder.parent)  # a listing: cheap enough for every start
        if folder.is_dir() and folder_problem(folder, digest) is None:
            return folder
        self._build_locked(folder, inputs, digest)
        return folder

    def _build_locked(self, folder: Path, inputs: dict[str, Any], digest: str) -> None:
        """Under the folder's lock: check again (another process may have built it), then build."""
        with exclusive_lock(folder.with_name(folder.name + ".lock"), f"preprocessing into {folder}"):
            if folder.is_dir():
                problem = folder_problem(folder, digest, headers=True)
                if problem is None:
                    return  # another process built or repaired it while we waited
                warnings.warn(f"The preprocessed cache {folder} is damaged ({problem}); rebuilding it "
                              f"from {self.data_dir}", CacheRepairWarning, stacklevel=3)
                discard(folder)
            self._build(folder, inputs, digest)

    def _build(self, folder: Path, inputs: dict[str, Any], digest: str) -> None:
        """Preprocess every split into a private staging folder, write the manifest, rename it into place."""
        rank_zero_info(f"Preprocessing {type(self).__name__} from {self.data_dir} into {folder}")
        staging = staging_path(folder)
        staging.mkdir(parents=True)
        try:
            examples, files = self._write_splits(staging)
            write_manifest(staging, inputs, digest, examples, files)
            staging.rename(folder)  # atomic: a reader never sees a half-written cache
        except OSError:
            remove_path(staging)
            # Only without a working lock can another process have published first.
            if not folder.is_dir() or folder_problem(folder, digest) is not None:
                raise
        except BaseException:
            remove_path(staging)
            raise

    def _write_splits(self, staging: Path) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        """Each split's arrays as ``.npy`` files; returns example counts and the manifest's file entries."""
        examples: dict[str, int] = {}
        files: dict[str, dict[str, Any]] = {}
        for split in tqdm(self.splits, desc=f"{type(self).__name__}: preprocessing", unit="split"):
            arrays = self.build_split(split)
            self._check_split(split, arrays)
            for name, array in arrays.items():
                path = staging / f"{split}.{name}.npy"
                np.save(path, np.ascontiguousarray(array), allow_pickle=False)
                files[path.name] = describe_array(path, array)
            examples[split] = len(arrays[f"{self.sequence_fields[0]}_offsets"]) - 1
        return examples, files

    def _check_split(self, split: str, arrays: SplitArrays) -> None:
        for field in self.sequence_fields:
            if field not in arrays or f"{field}_offsets" not in arrays:
                raise ValueError(f"{type(self).__name__}.build_split({split!r}) gave no {field!r} arrays")
        if len(arrays[f"{self.sequence_fields[0]}_offsets"]) < 2:
            raise ValueError(f"{type(self).__name__}: the {split} split of {self.data_dir} has no examples")

    def load_split(self, split: str) -> TokenDataset:
        """Memory-map a cached split; a damaged cache is rebuilt first (with one warning)."""
        folder, inputs, digest = self._locate_cache()
        if not folder.is_dir():
            raise RuntimeError(f"no preprocessed cache at {folder}; call prepare_data() first")
        problem = folder_problem(folder, digest)
        arrays, problem = (None, problem) if problem else map_split(folder, split)
        if problem is not None:
            self._build_locked(folder, inputs, digest)
            arrays, problem = map_split(folder, split)
            if problem is not None:
                raise RuntimeError(f"the rebuilt cache {folder} is unreadable ({problem}); "
                                   "is another program writing there? Delete the folder and run again")
        return TokenDataset(arrays, self.sequence_fields)

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs; say once (a log line) how many examples ``max_length`` cuts."""
        needed = {
            "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
        }.get(stage or "", self.splits)
        room = self.max_length - int(self.prepend_cls)
        truncated = {}
        for split in needed:
            if split in self.datasets:
                continue
            dataset = self.load_split(split)
            self.datasets[split] = dataset
            longest = {field: dataset.lengths(field) for field in self.sequence_fields
                       if field.startswith("input_ids")}
            n_cut = int(sum((lengths > room).sum() for lengths in longest.values()))
            if n_cut:
                truncated[split] = n_cut
        if truncated:
            shown = ", ".join(f"{n} of {len(self.datasets[s])} {s}" for s, n in truncated.items())
            # A log line, not a Python warning: it describes this run's data (a config choice),
            # and the first lines a user reads should not look like a library's complaints.
            if rank_zero_only.rank == 0:
                cls = " (with [CLS])" if self.prepend_cls else ""
                log.warning(f"{type(self).__name__}: {shown} sequences are longer than max_length="
                            f"{self.max_length}{cls} and are truncated to their first tokens; "
                            "raise data.max_length to keep them whole.")

    def collator(self, split: str = "train") -> PaddingCollator:
        """How ``split``'s examples become a batch (the same for every split here)."""
        return PaddingCollator(self.max_length, self.pad_id, self.cls_id, self.sequence_fields)

    def dataset(self, split: str) -> TokenDataset:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not loaded; call setup() first")
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collator(split),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=worker_init,  # workers ignore SIGTERM/SIGINT: the main process stops them
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), sharded over the ranks, resumable inside an epoch
        (``src.data.samplers``)."""
        replicas, rank = self._world()
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = ResumableSampler(self.dataset("train"), num_replicas=replicas, rank=rank, seed=seed)
        loader = ResumableLoader(
            self.dataset("train"), sampler=sampler, batch_size=self.batch_size,
            num_workers=self.num_workers, collate_fn=self.collator("train"),
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
            worker_init_fn=worker_init,
        )
        if self._train_position is not None:
            loader.restore(self._train_position)
            self._train_position = None
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        """Under DDP each rank tests its own shard, so every test example counts exactly once."""
        replicas, rank = self._world()
        if replicas == 1:
            return self.loader("test")
        return DataLoader(
            self.dataset("test"), batch_size=self.batch_size,
            sampler=ShardSampler(self.dataset("test"), num_replicas=replicas, rank=rank),
            num_workers=self.num_workers, collate_fn=self.collator("test"),
            pin_memory=torch.cuda.is_available(), worker_init_fn=worker_init,
        )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    # -- resuming: the position inside the training epoch travels in the checkpoint ----------------
    def state_dict(self) -> dict[str, Any]:
        if self._train_loader is None:
            return {}
        return {"train_position": self._train_loader.position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        if position is None:
            return
        if self._train_loader is not None:  # the loader already exists: move it
            self._train_loader.restore(position)
        else:  # restored before the loader is built (Lightning's usual order)
            self._train_position = dict(position)

    def predict_dataloader(self) -> DataLoader:
        return self.loader("test")
