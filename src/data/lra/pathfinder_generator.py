"""Built-in Pathfinder-32 generator, so the task needs no download of the LRA release.

After the task of Linsley et al. (2018) as used by the Long Range Arena (Pathfinder-32): a 32x32
grey image holds dashed curved contours; two marker squares sit at the two ends of one contour
(label 1) or at one end of each of two different contours (label 0).

The label is a property of the picture, by construction:

* a contour is a smooth walk (its heading turns each step by a curvature drifting between two
  random values plus a small random jitter) rasterised so that consecutive path pixels are
  8-neighbours; dashes light 2 path pixels and leave 1 dark, so consecutive lit pixels of one
  contour are at Chebyshev distance <= 2. Walks that curl back within distance 3 of themselves
  are rejected;
* lit pixels of different contours (their markers included) are at Chebyshev distance >= 3: a
  contour is drawn only where none of its lit pixels falls in the 5x5 neighbourhood of a pixel
  already lit. Shapes are drawn at random; for each, all positions inside the image are tested at
  once and a random free one is taken; a shape with none is rejected (and a whole image is
  restarted if no shape of one contour fits);
* so two lit pixels lie on one contour exactly when a chain of lit pixels with steps of Chebyshev
  distance <= 2 joins them, and the label is 1 exactly when the markers are so joined.

Every image has the same parts whatever its label: two main contours of ``L`` dashes (the
difficulty, as in the release: 6, 9 or 14), two 3x3 markers, and three distractor contours of
``L // 3`` dashes; so the number of lit pixels depends on ``L`` only (50, 68, 94), not on the label.
Labels alternate within consecutive pairs in a seeded order (exactly balanced). Each image draws
from its own generator seeded by ``(seed, index)``, so the bytes do not depend on ``--workers``.

Output, in the layout of the release (``pathfinder_datamodule.read_metadata`` reads it):
``<out>/<difficulty>/imgs/<k>/sample_<i>.png`` and ``<out>/<difficulty>/metadata/<k>.npy`` (text
despite the suffix: ``imgs/<k> sample_<i>.png <index> <label>`` per line), with ``<difficulty>``
the release's folder name (``curv_baseline`` for L=6, ``curv_contour_length_<L>`` otherwise).
``--geometry`` adds ``geometry.jsonl`` with the marker centres and every contour's lit pixels.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

CONTOUR_LENGTHS: tuple[int, ...] = (6, 9, 14)
SIZE = 32  # image side
MARGIN = 1  # path pixels keep this far from the border, so 3x3 markers stay inside
LIT = 255
SEPARATION = 3  # least Chebyshev distance between lit pixels of different contours
HALO = SEPARATION - 1  # a lit pixel forbids the (2 * HALO + 1)^2 square around it to other contours
SELF_INDEX_GAP = 5  # path pixels this far apart along one contour also keep SEPARATION (no curling back)
DASH = 2  # lit pixels per dash
GAP = 1  # dark pixels between dashes (at most 1, so a contour stays one component)
MAX_CURVATURE = 0.15  # largest steady turn per step, radians (it drifts between two such values)
TURN_JITTER = 0.2  # largest random extra turn per step, radians
WALK_BATCH = 8  # candidate walks drawn at once for one contour
MAX_BATCHES = 8  # batches for one contour before the image is restarted
MAX_RESTARTS = 100
NUM_DISTRACTORS = 3
PER_FOLDER = 1000  # images per imgs/<k> folder and metadata/<k>.npy file
CHUNK = 100  # images per worker task
LABEL_STREAM = 0x5A17  # tells the label seed apart from the image seed
_BOX = np.stack(np.meshgrid(np.arange(-1, 2), np.arange(-1, 2), indexing="ij"), -1).reshape(-1, 2)
PAD = HALO  # ``blocked`` maps are padded so that halos near the border need no clipping
_HALO = np.stack(np.meshgrid(np.arange(-HALO, HALO + 1), np.arange(-HALO, HALO + 1), indexing="ij"),
                 -1).reshape(-1, 2)


@dataclass(frozen=True)
class PathfinderSample:
    """One image with what made it: marker centres and each contour's lit pixels (row, column)."""

    pixels: np.ndarray  # uint8 [SIZE, SIZE]
    label: int
    markers: list[tuple[int, int]]
    contours: list[np.ndarray]  # int [n, 2] each: path-order dash pixels, then its marker pixels


def difficulty_name(contour_length: int) -> str:
    """The release's folder name for a contour length (its L=6 set is called ``curv_baseline``)."""
    check_contour_length(contour_length)
    return "curv_baseline" if contour_length == 6 else f"curv_contour_length_{contour_length}"


def check_contour_length(contour_length: int) -> None:
    """Only the release's difficulties, so every output folder is one the DataModule knows."""
    if contour_length not in CONTOUR_LENGTHS:
        raise ValueError(f"contour length must be one of {CONTOUR_LENGTHS}, got {contour_length}")


def label_of(seed: int, index: int) -> int:
    """0 or 1; the two images of each pair ``(2j, 2j + 1)`` differ, so labels are exactly balanced."""
    flip = int(np.random.SeedSequence((seed, index // 2, LABEL_STREAM)).generate_state(1)[0]) & 1
    return (index % 2) ^ flip


def dash_pattern(num_dashes: int) -> np.ndarray:
    """Lit flags along a path: ``num_dashes`` dashes of DASH pixels split by GAP dark pixels."""
    period = np.r_[np.ones(DASH, dtype=bool), np.zeros(GAP, dtype=bool)]
    return np.tile(period, num_dashes)[:-GAP]


def random_walks(rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """``count`` smooth walks of ``length`` pixels from the origin, int [count, length, 2].

    The heading turns each step by a curvature that drifts linearly from one random value to
    another (arcs and S-bends) plus a small random jitter. Each step moves the dominant coordinate
    by exactly 1 and the other by at most 1, so consecutive pixels are distinct 8-neighbours.
    """
    bend = rng.uniform(-MAX_CURVATURE, MAX_CURVATURE, size=(2, count, 1))
    drift = np.linspace(0.0, 1.0, length - 1)[None, :]
    jitter = rng.uniform(-TURN_JITTER, TURN_JITTER, size=(count, length - 1))
    turns = bend[0] + (bend[1] - bend[0]) * drift + jitter
    heading = rng.uniform(0.0, 2 * np.pi, size=(count, 1)) + np.cumsum(turns, axis=1)
    step = np.stack([np.sin(heading), np.cos(heading)], axis=-1)
    step /= np.abs(step).max(axis=-1, keepdims=True)
    positions = np.concatenate([np.zeros((count, 1, 2)), np.cumsum(step, axis=1)], axis=1)
    return np.floor(positions + 0.5).astype(np.int64)


def fitting_shapes(walks: np.ndarray) -> np.ndarray:
    """The walks that fit inside the margin, moved so that their lowest row and column are 0."""
    low, high = walks.min(axis=1), walks.max(axis=1)
    fits = ((high - low) <= SIZE - 1 - 2 * MARGIN).all(axis=1)
    return walks[fits] - low[fits, None, :]


def self_clear(walk: np.ndarray) -> bool:
    """Whether pixels more than SELF_INDEX_GAP apart along the walk keep SEPARATION (no curling back)."""
    distance = np.abs(walk[:, None, :] - walk[None, :, :]).max(axis=-1)
    return not np.triu(distance < SEPARATION, k=SELF_INDEX_GAP).any()


def contour_pixels(walk: np.ndarray, pattern: np.ndarray, marked: Sequence[int]) -> np.ndarray:
    """Lit pixels of a walk, [n, 2]: dash pixels in path order, then 3x3 markers at ``marked`` ends."""
    return np.concatenate([walk[pattern], *(walk[end] + _BOX for end in marked)])


def free_offsets(blocked: np.ndarray, pixels: np.ndarray, walk_size: np.ndarray) -> np.ndarray:
    """Every shift (row, column) that keeps a walk inside the margin with none of ``pixels`` blocked.

    Pixels are relative to the walk's lowest row and column; markers may reach 1 beyond the walk.
    A sliding-window view of ``blocked`` tests all shifts in one indexing.
    """
    inner = blocked[PAD + MARGIN - 1 : PAD + SIZE - MARGIN + 1, PAD + MARGIN - 1 : PAD + SIZE - MARGIN + 1]
    windows = np.lib.stride_tricks.sliding_window_view(inner, tuple(int(n) + 2 for n in walk_size))
    return np.argwhere(~windows[:, :, pixels[:, 0] + 1, pixels[:, 1] + 1].any(axis=-1)) + MARGIN


def place_contour(
    rng: np.random.Generator, blocked: np.ndarray, num_dashes: int, marked: Sequence[int]
) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """Lit pixels and marker centres of a new contour clear of ``blocked``; None if none fitted.

    Shapes are drawn WALK_BATCH at a time; for each, in turn, every position is tested and a random
    free one is kept.
    """
    pattern = dash_pattern(num_dashes)
    for _ in range(MAX_BATCHES):
        for walk in fitting_shapes(random_walks(rng, WALK_BATCH, pattern.size)):
            if not self_clear(walk):
                continue
            pixels = contour_pixels(walk, pattern, marked)
            offsets = free_offsets(blocked, pixels, walk.max(axis=0) + 1)
            if len(offsets):
                shift = offsets[rng.integers(len(offsets))]
                return pixels + shift, [(int(r), int(c)) for r, c in walk[list(marked)] + shift]
    return None


def unique_in_order(pixels: np.ndarray) -> np.ndarray:
    """Each pixel once, at its first place (a marker covers the first and last path pixels)."""
    _, first = np.unique(pixels, axis=0, return_index=True)
    return pixels[np.sort(first)]


def block_around(blocked: np.ndarray, pixels: np.ndarray) -> None:
    """Forbid every pixel closer than SEPARATION to ``pixels`` (``blocked`` is padded by PAD)."""
    halo = (pixels[:, None, :] + _HALO[None] + PAD).reshape(-1, 2)
    blocked[halo[:, 0], halo[:, 1]] = True


def try_layout(
    rng: np.random.Generator, label: int, contour_length: int
) -> tuple[list[np.ndarray], list[tuple[int, int]]] | None:
    """Contours and marker centres of one image, or None when a contour found no room."""
    first_end = [0, -1] if label else [0]
    plan = [(contour_length, first_end), (contour_length, [] if label else [0])]
    plan += [(max(2, contour_length // 3), [])] * NUM_DISTRACTORS
    blocked = np.zeros((SIZE + 2 * PAD, SIZE + 2 * PAD), dtype=bool)
    contours: list[np.ndarray] = []
    markers: list[tuple[int, int]] = []
    for num_dashes, marked in plan:
        placed = place_contour(rng, blocked, num_dashes, marked)
        if placed is None:
            return None
        pixels, centres = placed
        block_around(blocked, pixels)
        contours.append(unique_in_order(pixels))
        markers += centres
    return contours, markers


def make_sample(seed: int, index: int, contour_length: int) -> PathfinderSample:
    """Image ``index`` of the data set ``seed`` (its own generator, so workers do not matter)."""
    rng = np.random.default_rng((seed, index))
    label = label_of(seed, index)
    for _ in range(MAX_RESTARTS):
        layout = try_layout(rng, label, contour_length)
        if layout is not None:
            contours, markers = layout
            pixels = np.zeros((SIZE, SIZE), dtype=np.uint8)
            lit = np.concatenate(contours)
            pixels[lit[:, 0], lit[:, 1]] = LIT
            return PathfinderSample(pixels, label, markers, contours)
    raise RuntimeError(f"image {index}: no layout found in {MAX_RESTARTS} tries (contour length "
                       f"{contour_length})")


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grey PNG bytes (Pillow's default compression, so equal pixels give equal bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_location(index: int, per_folder: int) -> tuple[str, str]:
    """``(imgs/<k>, sample_<i>.png)`` of image ``index``, ``i`` counted within its folder."""
    return f"imgs/{index // per_folder}", f"sample_{index % per_folder}.png"


@dataclass(frozen=True)
class ChunkJob:
    """Images ``start..stop - 1`` of one data set: what a worker needs, picklable."""

    root: str
    start: int
    stop: int
    seed: int
    contour_length: int
    per_folder: int
    geometry: bool


def run_chunk(job: ChunkJob) -> list[tuple[int, str, str]]:
    """Write the PNGs of a chunk; return ``(index, metadata line, geometry line)`` per image."""
    rows = []
    for index in range(job.start, job.stop):
        sample = make_sample(job.seed, index, job.contour_length)
        folder, name = image_location(index, job.per_folder)
        Path(job.root, folder, name).write_bytes(encode_png(sample.pixels))
        geometry = ""
        if job.geometry:
            record = {"file": f"{folder}/{name}", "label": sample.label,
                      "markers": [list(m) for m in sample.markers],
                      "contours": [c.tolist() for c in sample.contours]}
            geometry = json.dumps(record, separators=(",", ":"))
        rows.append((index, f"{folder} {name} {index} {sample.label}", geometry))
    return rows


def chunk_jobs(root: Path, num: int, seed: int, contour_length: int, per_folder: int,
               geometry: bool) -> list[ChunkJob]:
    """Chunks that never straddle two folders, so a metadata file is made of whole chunks."""
    bounds = sorted({*range(0, num, CHUNK), *range(0, num, per_folder), num})
    return [ChunkJob(str(root), a, b, seed, contour_length, per_folder, geometry)
            for a, b in zip(bounds[:-1], bounds[1:])]


def run_jobs(jobs: list[ChunkJob], workers: int) -> Iterator[list[tuple[int, str, str]]]:
    """Results in job order, in this process or a pool (spawned: safe after torch is imported)."""
    if workers == 1:
        yield from map(run_chunk, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(run_chunk, jobs)


def check_args(num: int, contour_length: int, seed: int, workers: int, per_folder: int) -> None:
    """Clear errors before any file is written."""
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    check_contour_length(contour_length)
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if per_folder < 1:
        raise ValueError(f"--per-folder must be at least 1, got {per_folder}")


def write_text(path: Path, lines: list[str]) -> None:
    """Write under a temporary name and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def generate_pathfinder(
    out_dir: Path | str,
    num: int,
    contour_length: int = 14,
    seed: int = 0,
    *,
    geometry: bool = False,
    workers: int = 1,
    per_folder: int = PER_FOLDER,
    progress: bool = True,
) -> Path:
    """Write ``num`` images and their metadata under ``out_dir/<difficulty>``; return that folder.

    The metadata files are written last, so an interrupted run leaves no listing of missing images;
    metadata files and ``geometry.jsonl`` of an earlier run into the same folder are replaced or removed.
    """
    check_args(num, contour_length, seed, workers, per_folder)
    root = Path(out_dir) / difficulty_name(contour_length)
    for k in range((num - 1) // per_folder + 1):
        (root / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    metadata: dict[int, list[str]] = {}
    geometry_lines: list[str] = []
    jobs = chunk_jobs(root, num, seed, contour_length, per_folder, geometry)
    with tqdm(total=num, desc=f"Pathfinder {root.name}", unit="img", disable=not progress) as bar:
        for rows in run_jobs(jobs, workers):
            for index, line, geometry_line in rows:
                metadata.setdefault(index // per_folder, []).append(line)
                geometry_lines.append(geometry_line)
            bar.update(len(rows))
    if geometry:
        write_text(root / "geometry.jsonl", geometry_lines)
    else:
        (root / "geometry.jsonl").unlink(missing_ok=True)  # it would describe other images
    for k, lines in metadata.items():
        write_text(root / "metadata" / f"{k}.npy", lines)
    for stale in set((root / "metadata").glob("*.npy")) - {root / "metadata" / f"{k}.npy" for k in metadata}:
        stale.unlink()  # left by a larger earlier run: it would list images of another data set
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m src.data.lra.pathfinder_generator --out data/lra/pathfinder32 --num 200000``."""
    p = argparse.ArgumentParser(description="Generate Pathfinder-32 images in the LRA release layout.")
    p.add_argument("--out", type=Path, required=True, help="the pathfinder32 folder to write into")
    p.add_argument("--num", type=int, required=True, help="number of images")
    p.add_argument("--contour-length", type=int, default=14, choices=CONTOUR_LENGTHS,
                   help="dashes per contour: the difficulty (release: 6, 9, 14)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--geometry", action="store_true", help="also write geometry.jsonl")
    p.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    p.add_argument("--per-folder", type=int, default=PER_FOLDER, help="images per imgs/<k> folder")
    p.add_argument("--force", action="store_true", help="write into a folder that already has metadata")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    try:
        check_args(args.num, args.contour_length, args.seed, args.workers, args.per_folder)
    except ValueError as error:
        p.error(str(error))
    existing = args.out / difficulty_name(args.contour_length) / "metadata"
    if not args.force and existing.is_dir() and any(existing.iterdir()):
        p.error(f"refusing to write into {existing.parent}: it already has metadata (use --force)")
    root = generate_pathfinder(args.out, args.num, args.contour_length, args.seed, geometry=args.geometry,
                               workers=args.workers, per_folder=args.per_folder,
                               progress=not args.no_progress)
    print(f"wrote {args.num} images to {root}")


if __name__ == "__main__":
    main()
