"""The manifest of a preprocessed cache folder: what it must hold, checked cheaply on every start.

``manifest.json`` is written last into the staging folder, so a folder that has one was
complete when published. It lists every array file with its size in bytes, dtype and
shape, and the SHA-256 of the preprocessing inputs (the cache-key record: task, options,
source fingerprints). Checking a folder costs a ``stat`` per file and the ``.npy``
headers, never a read of the arrays: a missing, truncated, replaced or foreign file, or a
folder built from other inputs, is found without hashing gigabytes on each run.

Example::

    {"format": 2, "inputs_sha256": "9f2c...", "inputs": {...}, "examples": {"train": 96000, ...},
     "files": {"train.labels.npy": {"bytes": 768128, "dtype": "<i8", "shape": [96000]}, ...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from src.data.preparation import write_text_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2


def describe_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    """What the manifest records of one saved array."""
    return {"bytes": path.stat().st_size, "dtype": array.dtype.str, "shape": list(array.shape)}


def write_manifest(folder: Path, inputs: dict[str, Any], digest: str, examples: dict[str, int],
                   files: dict[str, dict[str, Any]]) -> None:
    """Write ``manifest.json`` (last: it marks the folder complete)."""
    record = {"format": MANIFEST_FORMAT, "inputs_sha256": digest, "inputs": inputs,
              "examples": examples, "files": dict(sorted(files.items()))}
    write_text_atomic(folder / MANIFEST, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or ``None`` if it is missing or unreadable."""
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def folder_problem(folder: Path, digest: str, headers: bool = False) -> str | None:
    """Why the cache ``folder`` cannot be used (``None``: it can): names and sizes, and with
    ``headers`` also each ``.npy`` header against the manifest (still no array data read)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"{MANIFEST} is missing or unreadable"
    if manifest.get("inputs_sha256") != digest or manifest.get("format") != MANIFEST_FORMAT:
        return f"{MANIFEST} belongs to other preprocessing inputs"
    listed: dict[str, dict[str, Any]] = manifest["files"]
    present = {path.name: path for path in folder.glob("*.npy")}
    for name, entry in listed.items():
        if name not in present:
            return f"{name} is missing"
        size = present[name].stat().st_size
        if size != entry.get("bytes"):
            return (f"{name} has {size} bytes where the manifest says {entry.get('bytes')} "
                    "(truncated or replaced)")
    foreign = sorted(set(present) - set(listed))
    if foreign:
        return f"{foreign[0]} is not in the manifest (a foreign file)"
    if headers:
        splits = {name.split(".", 1)[0] for name in listed}
        return next((problem for split in sorted(splits) if (problem := map_split(folder, split)[1])), None)
    return None


def map_split(folder: Path, split: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Memory-map one split's arrays listed in the manifest: ``(arrays, None)`` or ``(None, why not)``."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None, f"{MANIFEST} is missing or unreadable"
    arrays = {}
    for name, entry in manifest["files"].items():
        if not name.startswith(f"{split}."):
            continue
        try:
            array = np.load(folder / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            return None, f"{name} cannot be read ({error})"
        problem = array_problem(name, array, entry)
        if problem is not None:
            return None, problem
        arrays[name[len(split) + 1 : -len(".npy")]] = array
    if not arrays:
        return None, f"{MANIFEST} lists no {split} arrays"
    return arrays, None


def array_problem(name: str, array: np.ndarray, entry: dict[str, Any]) -> str | None:
    """A loaded array whose header disagrees with the manifest (a same-size foreign file)."""
    if array.dtype.str != entry.get("dtype") or list(array.shape) != entry.get("shape"):
        return (f"{name} holds {array.dtype.str}{list(array.shape)} where the manifest says "
                f"{entry.get('dtype')}{entry.get('shape')}")
    return None
