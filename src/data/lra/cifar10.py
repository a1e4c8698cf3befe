"""CIFAR-10 readers for LRA Image: the official python batches (safely) or an ``.npz``.

The official ``cifar-10-batches-py`` files are pickles: dicts with ``b"data"`` (uint8
``[N, 3072]``, each row 1024 red, 1024 green then 1024 blue values of a 32x32 image in
row-major order) and ``b"labels"`` (N ints 0-9). A plain ``pickle.load`` would run any code a
tampered file names, so ``RestrictedUnpickler`` resolves only the NumPy array pieces these
files contain and refuses every other global.

The ``.npz`` alternative holds ``train_data``, ``train_labels``, ``test_data`` and
``test_labels``, data either ``[N, 3072]`` as in the batches or ``[N, 32, 32, 3]`` images.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
NPZ_KEYS: tuple[str, ...] = ("train_data", "train_labels", "test_data", "test_labels")
PIXELS = 32 * 32
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # R, G, B as in LRA's grey-scale conversion
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _numpy_core() -> Any:
    """``numpy._core`` (NumPy 2) or ``numpy.core`` (NumPy 1), whichever this NumPy has."""
    core = getattr(np, "_core", None)
    if core is None:
        import numpy.core as core  # NumPy 1
    return core


_RECONSTRUCT = _numpy_core().multiarray._reconstruct
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # Pickles name the array rebuilder by the module that defined it when they were written.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes a bytes object at pickle protocol <= 2 as _codecs.encode(text, "latin1");
    # it only turns text into bytes.
    ("_codecs", "encode"): codecs.encode,
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle named a global outside ``ALLOWED_GLOBALS`` (it would run code on loading)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain containers, and nothing else."""

    def __init__(self, file: Any, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise ForbiddenGlobalError(
                f"{self.source}: refusing to load the global '{module}.{name}': a CIFAR-10 batch "
                "holds only NumPy arrays, lists and bytes. The file is not an official "
                f"cifar-10-batches-py batch (or was tampered with); re-download {CIFAR_URL}."
            )
        return allowed


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data uint8 [N, 3072], labels int64 [N])`` of one official batch file, checked."""
    with open(path, "rb") as f:
        try:
            content = RestrictedUnpickler(f, str(path)).load()
        except ForbiddenGlobalError:
            raise
        except Exception as error:  # truncated or not a pickle at all
            raise ValueError(
                f"{path}: not a readable CIFAR-10 batch ({type(error).__name__}: {error})"
            ) from error
    if not isinstance(content, dict) or b"data" not in content or b"labels" not in content:
        keys = sorted(content)[:6] if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    return check_arrays(content[b"data"], content[b"labels"], str(path))


def load_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (data, labels), "test": (data, labels)}`` of an ``.npz`` (no pickled objects)."""
    with np.load(path, allow_pickle=False) as arrays:
        missing = [key for key in NPZ_KEYS if key not in arrays.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; expected {', '.join(NPZ_KEYS)}")
        return {part: check_arrays(arrays[f"{part}_data"], arrays[f"{part}_labels"], f"{path}:{part}_data")
                for part in ("train", "test")}


def check_arrays(data: Any, labels: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes, dtype and label range; ``[N, 32, 32, 3]`` images become ``[N, 3072]`` rows."""
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 pixels, got {data.dtype}")
    if data.ndim == 4 and data.shape[1:] == (32, 32, 3):
        data = data.transpose(0, 3, 1, 2).reshape(len(data), 3 * PIXELS)
    if data.ndim != 2 or data.shape[1] != 3 * PIXELS:
        raise ValueError(f"{source}: expected data of shape [N, 3072] or [N, 32, 32, 3], got {data.shape}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: expected {len(data)} integer labels, got shape {labels.shape} "
                         f"of {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels must be 0-9, found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


GREY_ROUNDINGS: tuple[str, ...] = ("tensorflow", "nearest")


def to_grey(data: np.ndarray, rounding: str = "nearest") -> np.ndarray:
    """``[N, 3072]`` RGB rows -> ``[N, 1024]`` uint8 grey from 0.2989 R + 0.5870 G + 0.1140 B.

    ``nearest``: the weighted sum rounded to the nearest integer. ``tensorflow``: what
    ``tf.image.rgb_to_grayscale`` on uint8 gives (the LRA pipeline the paper's harness ran):
    the channels scaled to [0, 1] by 1/255 in float32, weighted, then multiplied by 255.5 and
    truncated; it is often one below ``nearest``.
    """
    if rounding not in GREY_ROUNDINGS:
        raise ValueError(f"grey rounding must be one of {GREY_ROUNDINGS}, got {rounding!r}")
    if rounding == "tensorflow":
        red, green, blue = (data[:, i * PIXELS : (i + 1) * PIXELS].astype(np.float32) * np.float32(1 / 255)
                            for i in range(3))
        r, g, b = (np.float32(w) for w in GREY_WEIGHTS)
        grey = (r * red + g * green + b * blue) * np.float32(255.5)
        return np.clip(grey, 0, 255).astype(np.uint8)  # the cast truncates, as tf.cast does
    red, green, blue = (data[:, i * PIXELS : (i + 1) * PIXELS].astype(np.float64) for i in range(3))
    r, g, b = GREY_WEIGHTS
    grey = np.floor(r * red + g * green + b * blue + 0.5)
    return np.clip(grey, 0, 255).astype(np.uint8)
