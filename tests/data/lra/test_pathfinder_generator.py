"""Built-in Pathfinder generator: the label is read off the picture; balanced, seeded, release layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.lra.pathfinder_datamodule import decode_png, read_metadata
from src.data.lra.pathfinder_generator import generate_pathfinder, main

NUM = 2000


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """2000 images of the easiest difficulty (fast), with geometry."""
    out = tmp_path_factory.mktemp("pathfinder32")
    return generate_pathfinder(out, NUM, contour_length=6, seed=0, geometry=True, progress=False)


def load_pixels(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N, 32, 32] and labels [N] in metadata order."""
    samples = [s for path in sorted((root / "metadata").glob("*.npy")) for s in read_metadata(path)]
    pixels = np.stack([np.asarray(Image.open(root / folder / name)) for folder, name, _ in samples])
    return pixels, np.array([label for _, _, label in samples])


def load(root: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Pixels and labels, and the geometry records."""
    geometry = [json.loads(line) for line in (root / "geometry.jsonl").read_text().splitlines()]
    return *load_pixels(root), geometry


def components(lit: np.ndarray) -> np.ndarray:
    """Component ids [N, 32, 32] of lit pixels joined at Chebyshev distance <= 2 (-1 where dark).

    Written here, independently of the generator: every lit pixel repeatedly takes the least id in
    its 5x5 neighbourhood until nothing changes.
    """
    big = np.iinfo(np.int64).max
    ids = np.where(lit, np.arange(lit[0].size).reshape(lit.shape[1:]), big).astype(np.int64)
    while True:
        padded = np.pad(ids, ((0, 0), (2, 2), (2, 2)), constant_values=big)
        rows = np.min([padded[:, i : i + lit.shape[1], :] for i in range(5)], axis=0)
        box = np.min([rows[:, :, j : j + lit.shape[2]] for j in range(5)], axis=0)
        new = np.where(lit, box, big)
        if np.array_equal(new, ids):
            return np.where(lit, ids, -1)
        ids = new


def test_the_component_checker_joins_at_chebyshev_distance_2_only():
    lit = np.zeros((1, 32, 32), dtype=bool)
    lit[0, 5, [3, 5, 8]] = True  # 3 and 5 are 2 apart (joined), 5 and 8 are 3 apart (not)
    ids = components(lit)[0]
    assert ids[5, 3] == ids[5, 5] != ids[5, 8]


def test_the_label_is_whether_the_markers_are_joined_in_the_picture(generated):
    pixels, labels, geometry = load(generated)
    assert pixels.shape == (NUM, 32, 32) and pixels.dtype == np.uint8
    ids = components(pixels > 0)
    markers = np.array([record["markers"] for record in geometry])  # [N, 2, 2]
    rows = np.arange(NUM)[:, None]
    at_markers = ids[rows, markers[..., 0], markers[..., 1]]
    assert (at_markers >= 0).all()  # marker centres are lit
    joined = at_markers[:, 0] == at_markers[:, 1]
    assert np.array_equal(joined.astype(int), labels)
    # each listed contour is exactly one component: different contours are kept apart
    counts = [len(np.unique(i[i >= 0])) for i in ids]
    assert counts == [len(record["contours"]) for record in geometry]


def test_labels_are_balanced_and_match_the_geometry(generated):
    _, labels, geometry = load(generated)
    assert 0.45 <= labels.mean() <= 0.55
    assert [record["label"] for record in geometry] == labels.tolist()
    assert geometry[0]["file"] == "imgs/0/sample_0.png"


def test_geometry_lists_the_lit_pixels_inside_the_image(generated):
    pixels, _, geometry = load(generated)
    for image, record in zip(pixels[:200], geometry[:200]):
        listed = np.zeros_like(image, dtype=bool)
        for contour in record["contours"]:
            listed[tuple(np.array(contour).T)] = True  # an index outside 0..31 would raise
        assert np.array_equal(listed, image > 0)
        for r, c in record["markers"]:
            assert (image[r - 1 : r + 2, c - 1 : c + 2] > 0).all()  # 3x3 marker, whole inside


def test_the_release_reader_reads_the_generated_folder(generated):
    assert generated.name == "curv_baseline"  # the release's name for contour length 6
    samples = [s for path in sorted((generated / "metadata").glob("*.npy")) for s in read_metadata(path)]
    assert len(samples) == NUM and samples[1001][:2] == ("imgs/1", "sample_1.png")
    for folder, name, _ in samples[::100]:
        image = decode_png(generated / folder / name)
        assert image is not None and image.shape == (1024,) and image.max() == 255


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    options = {"contour_length": 9, "geometry": True, "per_folder": 25, "progress": False}
    one = generate_pathfinder(tmp_path / "a", 60, seed=3, workers=1, **options)
    two = generate_pathfinder(tmp_path / "b", 60, seed=3, workers=2, **options)
    other = generate_pathfinder(tmp_path / "c", 60, seed=4, workers=1, **options)
    assert len(tree_bytes(one)) == 60 + 3 + 1  # images, metadata/0..2.npy, geometry.jsonl
    assert tree_bytes(one) == tree_bytes(two)
    assert tree_bytes(one) != tree_bytes(other)


def test_longer_contours_light_more_pixels(tmp_path):
    lit = {}
    for length in (6, 9, 14):
        root = generate_pathfinder(tmp_path, 20, contour_length=length, seed=1, progress=False)
        assert root.name == ("curv_baseline" if length == 6 else f"curv_contour_length_{length}")
        pixels, _ = load_pixels(root)
        lit[length] = (pixels > 0).sum(axis=(1, 2)).mean()
    assert lit[6] < lit[9] < lit[14]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num", "0"], "--num must be at least 1"),
        (["--num", "5", "--contour-length", "7"], "invalid choice: 7"),
        (["--num", "5", "--workers", "0"], "--workers must be at least 1"),
        (["--num", "5", "--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_cli_argument_errors_are_clear(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_writes_and_refuses_to_overwrite_without_force(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--num", "4", "--contour-length", "14", "--no-progress"]
    main(argv)
    assert "wrote 4 images" in capsys.readouterr().out
    assert len(read_metadata(tmp_path / "curv_contour_length_14" / "metadata" / "0.npy")) == 4
    with pytest.raises(SystemExit):
        main(argv)
    assert "use --force" in capsys.readouterr().err
    main([*argv[:3], "2", *argv[4:], "--force"])
    assert len(read_metadata(tmp_path / "curv_contour_length_14" / "metadata" / "0.npy")) == 2
