"""LRA Image: CIFAR-10 as sequences of 1024 grey-scale pixel tokens, 10 classes.

``data_dir`` is the ``cifar-10-batches-py`` folder (``data_batch_1`` .. ``data_batch_5`` and
``test_batch``, read with a restricted unpickler) or an ``.npz`` file with the same arrays (see
``src.data.lra.cifar10``). The first 90 % of the training images train, the last 10 % validate
(LRA's split), the test batch tests. Tokens: ``pixel_tokens`` (``PixelDataModule``); grey values
with the rounding ``grey_rounding`` names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from src.data.base_datamodule import SplitArrays
from src.data.lra.cifar10 import (
    CIFAR_URL,
    GREY_ROUNDINGS,
    NPZ_KEYS,
    TEST_BATCH,
    TRAIN_BATCHES,
    load_batch,
    load_npz,
    to_grey,
)
from src.data.lra.lra_datamodule import PixelDataModule

VAL_FRACTION = 0.1


class ImageDataModule(PixelDataModule):
    """CIFAR-10 grey-scale pixels (LRA max length 1024).

    Batches: ``input_ids`` LongTensor[B, 1024], ``attention_mask`` (all true, or the lit pixels
    with ``pixel_tokens: raw``), ``labels`` LongTensor[B] (0-9).

    Args:
        grey_rounding: ``tensorflow`` (``tf.image.rgb_to_grayscale``, the harness) or ``nearest``.
        data_dir: the ``cifar-10-batches-py`` folder, or an ``.npz`` file.
        max_length, batch_size: see ``TokenDataModule`` (here with the image task's defaults).
        **kwargs: ``num_workers``, ``prepend_cls``, ``cache_dir`` (see ``TokenDataModule``);
            ``pad_to``, ``mean_over`` (see ``LRADataModule``).
    """

    def __init__(
        self,
        data_dir: str = "data/lra/cifar-10-batches-py",
        max_length: int = 1024,
        batch_size: int = 256,
        grey_rounding: str = "nearest",
        **kwargs: Any,
    ) -> None:
        if grey_rounding not in GREY_ROUNDINGS:
            raise ValueError(f"grey_rounding must be one of {GREY_ROUNDINGS}, got {grey_rounding!r}")
        super().__init__(data_dir=data_dir, max_length=max_length, batch_size=batch_size, **kwargs)
        self.grey_rounding = grey_rounding

    def cache_options(self) -> dict[str, Any]:
        return {"pixel_tokens": self.pixel_tokens, "grey_rounding": self.grey_rounding}

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def data_dir_is_folder(self) -> bool:  # type: ignore[override]
        """An ``.npz`` file is a valid ``data_dir`` here (the base refuses files elsewhere)."""
        return not self.from_npz

    @property
    def from_npz(self) -> bool:
        return self.data_dir.suffix == ".npz"

    def source_files(self) -> list[Path]:
        paths = ([self.data_dir] if self.from_npz
                 else [self.data_dir / name for name in (*TRAIN_BATCHES, TEST_BATCH)])
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 not found (missing {', '.join(missing)}). Set data.data_dir to the "
                f"cifar-10-batches-py folder ({', '.join(TRAIN_BATCHES)}, {TEST_BATCH}) from "
                f"{CIFAR_URL}, or to an .npz file with the arrays {', '.join(NPZ_KEYS)}."
            )
        return paths

    def load_part(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB rows and labels of ``train`` (the five batches in order) or ``test``."""
        if self.from_npz:
            return load_npz(self.data_dir)[part]
        names = TRAIN_BATCHES if part == "train" else (TEST_BATCH,)
        batches = [load_batch(self.data_dir / name) for name in names]
        return np.concatenate([d for d, _ in batches]), np.concatenate([labels for _, labels in batches])

    def build_split(self, split: str) -> SplitArrays:
        data, labels = self.load_part("test" if split == "test" else "train")
        if split != "test":
            first_val = len(data) - round(VAL_FRACTION * len(data))
            rows = slice(first_val, None) if split == "val" else slice(None, first_val)
            data, labels = data[rows], labels[rows]
        grey = to_grey(data, self.grey_rounding)
        ids = self.pixel_ids(grey)
        offsets = np.arange(len(grey) + 1, dtype=np.int64) * grey.shape[1]
        return {"input_ids": ids, "input_ids_offsets": offsets, "labels": labels}
