"""LRA Pathfinder-32: are the two dots joined by one dashed path? 1024 grey pixel tokens, 2 classes.

``data_dir`` is the ``pathfinder32`` folder of the LRA release; ``difficulty`` picks
``<data_dir>/<difficulty>/``. Its ``metadata/*.npy`` files are, despite the suffix, text: one
image per line, space separated, field 0 the image folder (``imgs/0``), field 1 the PNG name,
field 3 the label 0/1. Images are decoded with Pillow; the release has some empty (and
possibly broken) PNGs, which are skipped and counted in one warning. When ``<difficulty>/`` has no
metadata and ``generate_if_missing`` is on, the built-in generator
(``src.data.lra.pathfinder_generator``) writes ``generate_num`` images there first, in the same
layout, and records its options so that another request never reuses them silently. The readable images are
split 80/10/10 into train/val/test after a seeded shuffle. Tokens: ``pixel_tokens``
(``PixelDataModule``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from tqdm.auto import tqdm

from src.data.base_datamodule import SplitArrays, pack_sequences
from src.data.lra.lra_datamodule import PixelDataModule
from src.data.lra.pathfinder_generator import difficulty_name, generate_pathfinder
from src.data.preparation import exclusive_lock, write_text_atomic
from src.data.text_decoding import naming_decode_errors

DIFFICULTIES: tuple[str, ...] = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
CONTOUR_LENGTH: dict[str, int] = {difficulty_name(length): length for length in (6, 9, 14)}
GENERATION_RECORD = "generation.json"
GENERATION_LOCK = ".generate.lock"


def read_metadata(path: Path) -> list[tuple[str, str, int]]:
    """``(folder, file name, label)`` of every line; ValueError naming file and line otherwise."""
    samples = []
    with naming_decode_errors(path), open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue  # a trailing blank line
            if len(fields) < 4:
                raise ValueError(
                    f"{path}:{line_no}: expected at least 4 space-separated fields (folder, PNG name, "
                    f"index, label), got {len(fields)}"
                )
            if fields[3] not in ("0", "1"):
                raise ValueError(f"{path}:{line_no}: expected the label (field 4) to be 0 or 1, "
                                 f"got {fields[3][:20]!r}")
            samples.append((fields[0], fields[1], int(fields[3])))
    return samples


def decode_png(path: Path) -> np.ndarray | None:
    """The grey pixels of a PNG, row-major uint8; ``None`` if the file is empty or unreadable."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError):  # empty, truncated or not a PNG at all
        return None
    return pixels.reshape(-1)


class PathfinderDataModule(PixelDataModule):
    """Pathfinder-32 at one difficulty (LRA max length 1024).

    Batches: ``input_ids`` LongTensor[B, 1024], ``attention_mask``, ``labels`` LongTensor[B].

    Args:
        difficulty: ``curv_baseline``, ``curv_contour_length_9`` or ``curv_contour_length_14``
            (the LRA task uses the hardest, ``curv_contour_length_14``).
        seed: seed of the shuffle before the 80/10/10 split.
        generate_if_missing: generate the images when ``<data_dir>/<difficulty>`` has no metadata.
        generate_num, generate_seed, generate_workers: how many images the generator writes
            (the release has 200 000 per difficulty), its seed, and its processes (the images
            do not depend on the number of processes).
        data_dir, max_length, batch_size: see ``TokenDataModule`` (here with Pathfinder's defaults).
        **kwargs: ``num_workers``, ``prepend_cls``, ``cache_dir`` (see ``TokenDataModule``);
            ``pad_to``, ``mean_over`` (see ``LRADataModule``).
    """

    def __init__(
        self,
        data_dir: str = "data/lra/pathfinder32",
        difficulty: str = "curv_contour_length_14",
        max_length: int = 1024,
        batch_size: int = 256,
        seed: int = 0,
        generate_if_missing: bool = True,
        generate_num: int = 200_000,
        generate_seed: int = 0,
        generate_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        if generate_num < 10:
            raise ValueError(f"generate_num must be >= 10 (each split needs images), got {generate_num}")
        if generate_workers < 1:
            raise ValueError(f"generate_workers must be >= 1, got {generate_workers}")
        super().__init__(data_dir=data_dir, max_length=max_length, batch_size=batch_size, **kwargs)
        self.difficulty = difficulty
        self.seed = seed
        self.generate_if_missing = generate_if_missing
        self.generate_num = generate_num
        self.generate_seed = generate_seed
        self.generate_workers = generate_workers
        self._decoded: tuple[list[np.ndarray], np.ndarray] | None = None
        self._served: set[str] = set()

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def root(self) -> Path:
        return self.data_dir / self.difficulty

    def cache_options(self) -> dict[str, Any]:
        return {"difficulty": self.difficulty, "seed": self.seed, "pixel_tokens": self.pixel_tokens}

    def prepare_sources(self) -> None:
        """Check the images exist; generate them (once, under a lock) into an empty difficulty folder."""
        if self.metadata_files():
            self._check_generation_record()
            return
        if not self.generate_if_missing:
            self.source_files()  # raises: where the release is, how to point data_dir at it
        with exclusive_lock(self.data_dir / GENERATION_LOCK, f"generating Pathfinder data in {self.root}"):
            if self.metadata_files():  # another process generated them while we waited
                self._check_generation_record()
                return
            rank_zero_info(f"Pathfinder data not found in {self.root}; generating {self.generate_num} images "
                           f"with src.data.lra.pathfinder_generator (contour length "
                           f"{CONTOUR_LENGTH[self.difficulty]}, seed {self.generate_seed}). This is "
                           "generated data, not the LRA release.")
            # The record first, the metadata last (the generator writes it after every image): a
            # killed generation leaves no metadata, so the next run generates again.
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.root / GENERATION_RECORD,
                              json.dumps(self._generation_options(), indent=2, sort_keys=True) + "\n")
            generate_pathfinder(self.data_dir, self.generate_num, CONTOUR_LENGTH[self.difficulty],
                                self.generate_seed, workers=self.generate_workers)

    def _generation_options(self) -> dict[str, int]:
        return {"num": self.generate_num, "seed": self.generate_seed,
                "contour_length": CONTOUR_LENGTH[self.difficulty]}

    def _check_generation_record(self) -> None:
        """Images we generated with other options must not be reused silently (the release has no record)."""
        record = self.root / GENERATION_RECORD
        if not self.generate_if_missing or not record.is_file():
            return
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{record} is not valid JSON ({error}); delete it, or the folder to "
                             "regenerate") from error
        wanted = self._generation_options()
        differing = [f"{key}: folder has {recorded.get(key)}, config asks {value}"
                     for key, value in wanted.items() if recorded.get(key) != value]
        if differing:
            raise ValueError(f"{self.root} was generated with other options ({'; '.join(differing)}). Point "
                             "data.init_args.data_dir at another folder, delete this one to regenerate, or "
                             "set the generate_* options to the folder's")

    def metadata_files(self) -> list[Path]:
        return sorted((self.root / "metadata").glob("*.npy"))

    def source_files(self) -> list[Path]:
        """The metadata files and the image folders (a folder's mtime changes when its files do)."""
        metadata = self.metadata_files()
        if not metadata:
            raise FileNotFoundError(
                f"Pathfinder data not found: no metadata/*.npy in {self.root}. Expected the LRA "
                f"release's pathfinder32 folder ({LRA_RELEASE_URL}, lra_release/pathfinder32/) with "
                f"{self.difficulty}/metadata/*.npy and {self.difficulty}/imgs/*/*.png; set "
                "data.data_dir to the pathfinder32 folder."
            )
        return metadata + sorted(p for p in (self.root / "imgs").glob("*") if p.is_dir())

    def decode_all(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Pixels and labels of every readable image listed in the metadata, in metadata order."""
        samples = [sample for path in self.metadata_files() for sample in read_metadata(path)]
        pixels, labels, empty, unreadable, missing = [], [], 0, 0, 0
        for folder, name, label in tqdm(samples, desc=f"Pathfinder {self.difficulty}: PNGs", unit="img"):
            path = self.root / folder / name
            if not path.is_file():
                missing += 1
                continue
            if path.stat().st_size == 0:
                empty += 1
                continue
            image = decode_png(path)
            if image is None:
                unreadable += 1
                continue
            pixels.append(image)
            labels.append(label)
        if not pixels:
            raise ValueError(f"none of the {len(samples)} images listed in {self.root}/metadata could be "
                             f"read ({missing} missing, {empty} empty, {unreadable} unreadable)")
        if empty or unreadable or missing:
            rank_zero_warn(
                f"Pathfinder {self.difficulty}: skipped {empty + unreadable + missing} of {len(samples)} "
                f"listed images ({empty} empty, {unreadable} unreadable, {missing} missing files)."
            )
        return pixels, np.asarray(labels, dtype=np.int64)

    def split_indices(self, count: int) -> dict[str, np.ndarray]:
        """Seeded 80/10/10 split of ``count`` images (val and test get ``round(count / 10)`` each)."""
        order = np.random.default_rng(self.seed).permutation(count)
        tenth = round(count / 10)
        return {"val": order[:tenth], "test": order[tenth : 2 * tenth], "train": order[2 * tenth :]}

    def build_split(self, split: str) -> SplitArrays:
        if self._decoded is None:
            self._decoded = self.decode_all()  # decoded once for the three splits
        pixels, labels = self._decoded
        rows = np.sort(self.split_indices(len(pixels))[split])
        ids, offsets = pack_sequences([self.pixel_ids(pixels[i]) for i in rows], np.uint16)
        self._served.add(split)
        if self._served >= set(self.splits):
            self._decoded, self._served = None, set()  # free the images once every split is built
        return {"input_ids": ids, "input_ids_offsets": offsets, "labels": labels[rows]}
