"""What the five LRA DataModules share: the harness's fixed array length and pooling divisor.

The published LRA numbers of the YOSO paper come from the authors' harness, which fed the model
arrays padded with 0 to a fixed length (ListOps 2048, Text 1024, Retrieval 4096 per document,
Image and Pathfinder 1024), took ``mask = ids != 0`` and pooled the final LayerNorm's output
times the mask as a mean over that whole padded length. ``pad_to`` and ``mean_over`` state
these choices as options (``docs/lra.md`` has the table); the encoder's position table is
``pad_to`` long, which the harness rounded up to a power of two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from src.data.base_datamodule import PaddingCollator, TokenDataModule
from src.data.lra.byte_tokens import VALUE_VOCAB_SIZE, value_tokens

MEAN_OVER: tuple[str, ...] = ("padded_length", "real_tokens")
PIXEL_TOKENS: tuple[str, ...] = ("raw", "shifted")


class LRADataModule(TokenDataModule):
    """``TokenDataModule`` with the LRA harness's padding and pooling options.

    Args:
        pad_to: pad every batch to this fixed length (the harness: the task's power of two,
            at least ``max_length``); ``None`` pads each batch to its longest sequence.
        mean_over: the classifier's mean pooling divides by ``padded_length`` (the harness:
            the sum over real tokens divided by ``pad_to``, so short inputs pool to shorter
            vectors) or by the number of ``real_tokens``. Linked into the model's ``pooling``
            (``mean_padded`` or ``mean``); ``padded_length`` needs ``pad_to``.
        **kwargs: ``data_dir``, ``max_length``, ``batch_size``, ... (see ``TokenDataModule``).
    """

    def __init__(self, pad_to: int | None = None, mean_over: str = "real_tokens", **kwargs: Any) -> None:
        if mean_over not in MEAN_OVER:
            raise ValueError(f"mean_over must be one of {MEAN_OVER}, got {mean_over!r}")
        if mean_over == "padded_length" and pad_to is None:
            raise ValueError("mean_over='padded_length' divides by the fixed padded length: set "
                             "data.init_args.pad_to (the harness: ListOps 2048, Text 1024, Retrieval 4096, "
                             "Image and Pathfinder 1024), or use mean_over='real_tokens'")
        if pad_to is not None and pad_to < kwargs.get("max_length", 1):
            raise ValueError(f"pad_to={pad_to} is shorter than max_length={kwargs['max_length']}: "
                             "raise pad_to (the harness pads to a power of two >= max_length)")
        super().__init__(**kwargs)
        self.pad_to = pad_to
        self.mean_over = mean_over

    @property
    def masks_pad_valued(self) -> bool:
        """Whether a token with the padding id is masked wherever it stands (raw pixel tokens)."""
        return False

    @property
    def encoder_length(self) -> int:
        return self.pad_to or self.max_length

    @property
    def pooling(self) -> str:
        if self.cls_id is not None:
            return "cls"
        return "mean_padded" if self.mean_over == "padded_length" else "mean"

    def collator(self, split: str = "train") -> PaddingCollator:
        return PaddingCollator(self.max_length, self.pad_id, self.cls_id, self.sequence_fields,
                               pad_to=self.pad_to, mask_pad_valued=self.masks_pad_valued,
                               compact=self.compacts)

    @property
    def compacts(self) -> bool:
        """Whether batches hold only the attended tokens, with ``position_ids`` (pixel tasks)."""
        return False


class PixelDataModule(LRADataModule):
    """An LRA task whose tokens are grey pixels (Image, Pathfinder): how a pixel becomes an id.

    Args:
        pixel_tokens: ``raw``: the grey value 0-255 is the id and, as id 0 is padding, black
            pixels are masked (the harness: only lit pixels are attended, at their positions);
            ``shifted``: the id is ``value + 1`` and every pixel is attended.
        compact_masked: with ``raw`` tokens, batches drop the masked black pixels and carry
            each lit pixel's index as ``position_ids``. An attention that sees its keys as a
            set (softmax, YOSO, YOSO-E, Performer) then computes what it computes on the full
            array, pooling included (``padded_length`` still divides by ``pad_to``), on only
            the lit pixels: ~50 of 1024 in Pathfinder. Attentions that read the sequence order
            (YOSO-C, Nystrom, Linformer) refuse such batches.
        **kwargs: see ``LRADataModule`` and ``TokenDataModule``.
    """

    def __init__(self, pixel_tokens: str = "shifted", compact_masked: bool = False, **kwargs: Any) -> None:
        if pixel_tokens not in PIXEL_TOKENS:
            raise ValueError(f"pixel_tokens must be one of {PIXEL_TOKENS}, got {pixel_tokens!r}")
        if compact_masked and pixel_tokens != "raw":
            raise ValueError("compact_masked drops the masked black pixels, but pixel_tokens='shifted' masks "
                             "none: set pixel_tokens: raw, or compact_masked: false")
        if compact_masked and kwargs.get("prepend_cls"):
            raise ValueError("compact_masked cannot keep a [CLS] at position 0: set prepend_cls: false")
        super().__init__(**kwargs)
        self.pixel_tokens = pixel_tokens
        self.compact_masked = compact_masked

    @property
    def compacts(self) -> bool:
        return self.compact_masked

    @property
    def base_vocab_size(self) -> int:
        return VALUE_VOCAB_SIZE - int(self.pixel_tokens == "raw")

    @property
    def masks_pad_valued(self) -> bool:
        return self.pixel_tokens == "raw"

    def pixel_ids(self, pixels: np.ndarray) -> np.ndarray:
        """``uint16`` ids of uint8 grey values (any shape, flattened) under ``pixel_tokens``."""
        ids = value_tokens(pixels)
        if self.pixel_tokens == "raw":
            ids -= 1
        return ids
