"""Byte and pixel tokens of the LRA Text, Retrieval, Image and Pathfinder tasks.

Each value 0-255 (a byte of text, a grey pixel) becomes the id ``value + 1``, so id 0 stays
padding and the vocabulary is 257 ids whatever the data holds.
"""

from __future__ import annotations

import numpy as np

VALUE_VOCAB_SIZE = 257
"""Ids of a byte/pixel task: padding 0 and the 256 values shifted by one."""


def value_tokens(values: bytes | bytearray | np.ndarray) -> np.ndarray:
    """``uint16`` ids (``value + 1``) of bytes or of a uint8 array (any shape, flattened)."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        array = np.frombuffer(values, dtype=np.uint8)
    else:
        array = np.asarray(values)
        if array.dtype != np.uint8:
            raise TypeError(f"expected uint8 values 0-255, got an array of {array.dtype}")
    ids = array.reshape(-1).astype(np.uint16)
    ids += 1  # in place: one uint16 copy of a possibly large buffer, not two
    return ids


class ByteSequences:
    """Collects many byte strings in one buffer, then packs them as flat ids and offsets.

    The AAN files hold hundreds of MB of text: one growing ``bytearray`` keeps the peak
    memory near the data's size, where a list of small arrays would multiply it.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lengths: list[int] = []

    def add(self, data: bytes) -> None:
        self._buffer += data
        self._lengths.append(len(data))

    def __len__(self) -> int:
        return len(self._lengths)

    def pack(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, offsets)`` as ``pack_sequences`` gives them: uint16 ids, ``len + 1`` int64 offsets."""
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        return value_tokens(self._buffer), offsets

