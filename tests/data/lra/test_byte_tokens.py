"""Byte/pixel ids: value + 1 (0 stays padding), packed with offsets."""

from __future__ import annotations

import numpy as np
import pytest

from src.data.lra.byte_tokens import ByteSequences, value_tokens


def test_every_byte_value_maps_to_value_plus_one():
    ids = value_tokens(bytes(range(256)))
    assert ids.dtype == np.uint16 and ids.tolist() == list(range(1, 257))
    with pytest.raises(TypeError, match="uint8"):
        value_tokens(np.arange(3, dtype=np.int32))


def test_sequences_pack_with_offsets():
    texts = ByteSequences()
    for text in (b"ab", b"", b"\xff"):
        texts.add(text)
    ids, offsets = texts.pack()
    assert (len(texts), ids.tolist(), offsets.tolist()) == (3, [98, 99, 256], [0, 2, 2, 3])
