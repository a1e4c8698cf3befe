"""LRA Pathfinder-32: metadata text files, Pillow decoding, skipped broken PNGs, seeded 80/10/10 split."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from src.data.lra.pathfinder_datamodule import PathfinderDataModule, read_metadata
from tests.data.lra.fixtures import write_pathfinder


def build(
    tmp_path, seed: int = 0, cache: str = "cache"
) -> tuple[PathfinderDataModule, list[warnings.WarningMessage]]:
    base = tmp_path / "pathfinder32"
    dm = PathfinderDataModule(str(base), difficulty="curv_contour_length_14", seed=seed,
                              cache_dir=str(tmp_path / cache))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.prepare_data()
    return dm, [w for w in caught if "Pathfinder" in str(w.message)]


def pixels_and_labels(dataset) -> list[tuple[bytes, int]]:
    return [(bytes((np.asarray(dataset[i]["input_ids"], dtype=np.int64) - 1).astype(np.uint8)),
             int(dataset[i]["labels"])) for i in range(len(dataset))]


def test_readable_images_split_80_10_10_and_broken_ones_are_counted_once(tmp_path):
    _, images = write_pathfinder(tmp_path, count=20)
    dm, caught = build(tmp_path)
    assert len(caught) == 1
    assert "skipped 2 of 22 listed images (1 empty, 1 unreadable, 0 missing files)" in str(caught[0].message)
    splits = {split: pixels_and_labels(dm.load_split(split)) for split in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    everything = [item for rows in splits.values() for item in rows]
    assert sorted(everything) == sorted(images.items())  # every readable image once, with its label
    assert (dm.vocab_size, dm.num_classes) == (257, 2)


def test_the_split_is_seeded(tmp_path):
    write_pathfinder(tmp_path, count=20)
    first, _ = build(tmp_path, seed=1, cache="a")
    again, _ = build(tmp_path, seed=1, cache="b")
    other, _ = build(tmp_path, seed=2, cache="a")
    assert first.cache_path() != other.cache_path()
    for split in ("train", "val", "test"):
        assert pixels_and_labels(first.load_split(split)) == pixels_and_labels(again.load_split(split))
    assert pixels_and_labels(first.load_split("val")) != pixels_and_labels(other.load_split("val"))


def test_batches_are_pixel_tokens(tmp_path):
    write_pathfinder(tmp_path, count=10, size=4)
    dm, _ = build(tmp_path)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"].shape == (1, 16) and int(batch["input_ids"].min()) >= 1


@pytest.mark.parametrize(("line", "message"), [
    ("imgs/0 sample_0.png 0", "expected at least 4 space-separated fields.*got 3"),
    ("imgs/0 sample_0.png 0 2 1.5 6", "expected the label \\(field 4\\) to be 0 or 1, got '2'"),
])
def test_malformed_metadata_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "0.npy"
    path.write_text(f"imgs/0 a.png 0 1 1.5 6\n{line}\n")
    with pytest.raises(ValueError, match=f"{path}:2: {message}"):
        read_metadata(path)


def test_missing_data_and_unknown_difficulty_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="difficulty must be one of"):
        PathfinderDataModule(str(tmp_path), difficulty="curv_contour_length_20")
    write_pathfinder(tmp_path, difficulty="curv_baseline")
    dm = PathfinderDataModule(str(tmp_path / "pathfinder32"), difficulty="curv_contour_length_9",
                              cache_dir=str(tmp_path / "c"), generate_if_missing=False)
    with pytest.raises(FileNotFoundError,
                       match=r"no metadata/\*\.npy in .*curv_contour_length_9.*lra_release\.gz"):
        dm.prepare_data()
