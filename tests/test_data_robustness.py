"""Data preparation that survives: parallel first runs, damaged caches, killed preparers, bad files.

``train.py`` runs use the tiny ListOps settings of ``tests/test_train.py``; the rest drives the
DataModules in-process (several processes at once where the point is concurrency).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.data.base_datamodule import CacheRepairWarning, TokenDataModule
from src.data.cache_manifest import MANIFEST, read_manifest
from src.data.glue.tasks import get_task, read_split
from src.data.lra.listops_datamodule import ListOpsDataModule
from src.data.lra.listops_generator import SPLITS, generate_listops, split_filename
from src.data.lra.pathfinder_datamodule import read_metadata
from src.data.lra.text_datamodule import TextDataModule
from src.data.mlm.corpus import read_text_file
from src.data.mlm.mlm_datamodule import MLMDataModule
from src.data.preparation import FOREIGN_STALE_AFTER_S, exclusive_lock
from src.data.text_decoding import NotUTF8Error
from tests.data.lra.fixtures import write_imdb
from tests.test_train import ROOT, tiny_overrides

GENERATION = dict(num_train=96, num_val=32, num_test=32, min_tree_length=10, max_tree_length=40)


def listops(tmp_path: Path, **options) -> ListOpsDataModule:
    settings = dict(data_dir=str(tmp_path / "listops"), cache_dir=str(tmp_path / "cache"), max_length=48,
                    batch_size=16, **GENERATION)
    return ListOpsDataModule(**{**settings, **options})


def train_command(tmp_path: Path, logs: str, *extra: str) -> list[str]:
    """A tiny quickstart run whose data and cache are ``tmp_path``'s and whose logs are its own."""
    return [sys.executable, "train.py", "--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path),
            f"--trainer.logger.init_args.save_dir={tmp_path / logs}", "--run_test=false", *extra]


def start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def finish(process: subprocess.Popen, timeout: int = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def cache_folders(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "listops").iterdir() if p.is_dir())


def file_bytes(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(pattern))}


def reference_cache(options: dict, cache_dir: Path) -> Path:
    """Preprocess the run's data again, into another cache, with the run's own data options."""
    dm = ListOpsDataModule(**{**options, "cache_dir": str(cache_dir)})
    dm.prepare_data()
    return dm.cache_path()


# -- parallel first runs ---------------------------------------------------------------------------
def test_two_concurrent_first_runs_share_one_generation_and_one_cache(tmp_path):
    runs = [start(train_command(tmp_path, f"logs{i}")) for i in range(2)]
    outputs = [finish(run) for run in runs]
    combined = "".join(outputs)
    assert combined.count("Generated ListOps data") == 1, combined[-4000:]
    assert combined.count("Preprocessing ListOpsDataModule") == 1, combined[-4000:]
    data = tmp_path / "listops"
    assert not [p.name for p in data.iterdir() if ".tmp" in p.name]  # no temporary names left
    options = yaml.safe_load(next((tmp_path / "logs0").rglob("config.yaml")).read_text())["data"]["init_args"]
    reference = tmp_path / "reference"
    generate_listops(reference, options["num_train"], options["num_val"], options["num_test"],
                     options["min_tree_length"], options["max_tree_length"], options["max_depth"],
                     options["max_args"], options["seed"], progress=False)
    assert file_bytes(data, "basic_*.tsv") == file_bytes(reference, "basic_*.tsv")
    [folder] = cache_folders(tmp_path / "cache")  # one cache, no staging left
    expected = reference_cache(options, tmp_path / "cache2")
    assert expected.name == folder.name
    assert file_bytes(folder, "*.npy") == file_bytes(expected, "*.npy")

    # The same folder, damaged: the next run repairs it with one warning naming it, and trains.
    with open(folder / "train.input_ids.npy", "r+b") as handle:
        handle.truncate(100)
    output = finish(start(train_command(tmp_path, "logs2")))
    assert output.count(f"The preprocessed cache {folder} is damaged") == 1, output[-4000:]
    assert "train.input_ids.npy has 100 bytes" in output
    assert "max_steps=6` reached" in output
    assert file_bytes(folder, "*.npy") == file_bytes(expected, "*.npy")


def _prepare_at_once(barrier, results, options: dict) -> None:
    """Child: count generations and cache builds (each slowed down so they would overlap)."""
    counts = {"generate": 0, "build": 0}
    generate, build = ListOpsDataModule._generate, TokenDataModule._build

    def slow_generate(self):
        counts["generate"] += 1
        time.sleep(0.5)
        generate(self)

    def slow_build(self, *args):
        counts["build"] += 1
        time.sleep(0.5)
        build(self, *args)

    ListOpsDataModule._generate, TokenDataModule._build = slow_generate, slow_build
    dm = ListOpsDataModule(**options)
    barrier.wait()
    try:
        dm.prepare_data()
        dm.setup("fit")
        results.put((counts, str(dm.cache_path()), len(dm.dataset("train")), None))
    except Exception as error:  # reported to the parent, which fails the test with it
        results.put((counts, None, None, repr(error)))


def test_four_processes_preparing_at_the_same_moment_generate_and_preprocess_once(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    options = dict(data_dir=str(tmp_path / "listops"), cache_dir=str(tmp_path / "cache"), max_length=48,
                   **GENERATION)
    children = [context.Process(target=_prepare_at_once, args=(barrier, results, options)) for _ in range(4)]
    for child in children:
        child.start()
    reports = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert [error for *_, error in reports] == [None] * 4
    assert sum(counts["generate"] for counts, *_ in reports) == 1
    assert sum(counts["build"] for counts, *_ in reports) == 1
    assert len({path for _, path, _, _ in reports}) == 1 and {n for *_, n, _ in reports} == {96}
    assert len(cache_folders(tmp_path / "cache")) == 1


# -- damaged caches --------------------------------------------------------------------------------
def truncate(folder: Path) -> str:
    with open(folder / "train.labels.npy", "r+b") as handle:
        handle.truncate(64)
    return "train.labels.npy has 64 bytes"


def delete(folder: Path) -> str:
    (folder / "train.labels.npy").unlink()
    return "train.labels.npy is missing"


def foreign_file(folder: Path) -> str:
    np.save(folder / "train.extra.npy", np.zeros(3), allow_pickle=False)
    return "train.extra.npy is not in the manifest"


def same_size_other_array(folder: Path) -> str:
    """A file of the right size but another shape (e.g. copied from another cache)."""
    path = folder / "val.labels.npy"
    labels = np.load(path, allow_pickle=False)
    np.save(path, labels.reshape(2, -1), allow_pickle=False)
    return "val.labels.npy holds <i8[2, 16]"


def no_manifest(folder: Path) -> str:
    (folder / MANIFEST).unlink()
    return f"{MANIFEST} is missing"


DAMAGES = [truncate, delete, foreign_file, same_size_other_array, no_manifest]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_a_damaged_cache_is_rebuilt_with_one_warning_naming_it(tmp_path, damage):
    dm = listops(tmp_path)
    dm.prepare_data()
    folder = dm.cache_path()
    original = file_bytes(folder, "*.npy")
    reason = damage(folder)
    again = listops(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.prepare_data()
        again.setup("fit")
        batch = next(iter(again.train_dataloader()))
    repairs = [str(w.message) for w in caught if issubclass(w.category, CacheRepairWarning)]
    assert len(repairs) == 1 and f"The preprocessed cache {folder} is damaged" in repairs[0], repairs
    assert reason in repairs[0]
    assert file_bytes(folder, "*.npy") == original and batch["input_ids"].shape[0] == 16


def test_damage_found_when_loading_is_repaired_there(tmp_path):
    """Damage after ``prepare_data`` (e.g. on another rank's setup) is repaired by ``setup`` itself."""
    dm = listops(tmp_path)
    dm.prepare_data()
    folder = dm.cache_path()
    original = file_bytes(folder, "*.npy")
    delete(folder)
    with pytest.warns(CacheRepairWarning, match="train.labels.npy is missing"):
        dm.setup("fit")
    assert file_bytes(folder, "*.npy") == original and len(dm.dataset("train")) == 96


def test_the_manifest_lists_sizes_shapes_and_the_inputs_hash(tmp_path):
    dm = listops(tmp_path)
    dm.prepare_data()
    manifest = read_manifest(dm.cache_path())
    assert manifest["inputs_sha256"].startswith(dm.cache_key())
    assert manifest["examples"] == {"train": 96, "val": 32, "test": 32}
    entry = manifest["files"]["train.labels.npy"]
    assert entry == {"bytes": (dm.cache_path() / "train.labels.npy").stat().st_size, "dtype": "<i8",
                     "shape": [96]}


# -- leftovers of killed processes ------------------------------------------------------------------
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_of_dead_processes_is_removed_and_live_ones_are_kept(tmp_path):
    parent = tmp_path / "cache" / "listops"
    host = socket.gethostname()
    dead = parent / f"0123456789abcdef.tmp-{host}-{dead_pid()}-deadbeef"
    live = parent / f"0123456789abcdef.tmp-{host}-{os.getpid()}-cafef00d"
    old_foreign = parent / "0123456789abcdef.tmp-elsewhere-12-0badc0de"
    new_foreign = parent / "0123456789abcdef.tmp-elsewhere-13-0badc0de"
    for folder in (dead, live, old_foreign, new_foreign):
        folder.mkdir(parents=True)
        (folder / "train.input_ids.npy").write_bytes(b"partial")
    long_ago = time.time() - FOREIGN_STALE_AFTER_S - 60
    for path in (old_foreign / "train.input_ids.npy", old_foreign):
        os.utime(path, (long_ago, long_ago))
    leftover_tsv = tmp_path / "listops" / f"basic_train.tsv.tmp-{host}-{dead_pid()}-deadbeef"
    leftover_tsv.parent.mkdir(parents=True)
    leftover_tsv.write_text("Source\tTarget\n")
    listops(tmp_path).prepare_data()
    assert not dead.exists() and not old_foreign.exists() and not leftover_tsv.exists()
    assert live.exists() and new_foreign.exists()


def test_a_waiting_process_says_whom_it_waits_for(tmp_path, caplog):
    lock = tmp_path / "x.lock"
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()

    def hold() -> None:
        with exclusive_lock(lock, "holding"):
            held.set()
            release.wait(30)

    holder = context.Process(target=hold)
    holder.start()
    held.wait(30)
    threading.Timer(1.0, release.set).start()
    with caplog.at_level("INFO"), exclusive_lock(lock, "preprocessing into somewhere"):
        pass
    holder.join(30)
    assert f"pid {holder.pid}" in caplog.text and "to finish preprocessing into somewhere" in caplog.text


# -- bad data files ---------------------------------------------------------------------------------
def inject(path: Path, line: int, data: bytes) -> int:
    """Put ``data`` at the start of 1-based ``line``; returns its byte offset in the file."""
    lines = path.read_bytes().splitlines(keepends=True)
    offset = sum(len(x) for x in lines[: line - 1])
    lines[line - 1] = data + lines[line - 1]
    path.write_bytes(b"".join(lines))
    return offset


def test_a_latin1_byte_in_a_listops_tsv_names_the_file_line_and_offset(tmp_path):
    generate_listops(tmp_path / "listops", progress=False, min_length=10, max_length=40, num_train=96,
                     num_val=32, num_test=32)
    path = tmp_path / "listops" / split_filename("val")
    offset = inject(path, 3, b"\xe9")
    with pytest.raises(NotUTF8Error, match=rf"{path}:3: byte 0xe9 at offset {offset} is not valid UTF-8; "
                                            r".*iconv"):
        listops(tmp_path).prepare_data()


def test_a_latin1_byte_in_glue_and_pathfinder_files_names_the_file_and_line(tmp_path):
    """(Text and Retrieval read raw bytes, as the task defines: any byte is a token there.)"""
    task = get_task("rte")
    glue = tmp_path / "RTE" / "dev.tsv"
    glue.parent.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "glue" / "RTE" / "dev.tsv", glue)
    offset = inject(glue, 4, b"caf\xe9 ")
    split = next(s for s in task.dev.values() if s.file == "dev.tsv")
    with pytest.raises(NotUTF8Error, match=rf"{glue}:4: byte 0xe9 at offset {offset + 3}.*re-download"):
        read_split(glue, task, split, strict=True)

    metadata = tmp_path / "0.npy"  # pathfinder's metadata files are text despite the name
    metadata.write_bytes(b"imgs/0 sample_0.png 0 1\nimgs/0 sample_\xe9.png 1 0\n")
    with pytest.raises(NotUTF8Error, match=rf"{metadata}:2: byte 0xe9 at offset 38"):
        read_metadata(metadata)


def test_a_binary_mlm_corpus_names_the_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"Plain text.\n\nMore text\n" + bytes(range(128, 256)) * 4)
    with pytest.raises(NotUTF8Error, match=rf"{corpus}:4: byte 0x80 at offset 23.*binary"):
        list(read_text_file(corpus))
    data = MLMDataModule(corpus=str(corpus), tokenizer_vocab_size=300, max_length=16,
                         cache_dir=str(tmp_path / "cache"))
    with pytest.raises(NotUTF8Error, match=rf"{corpus}:4"):
        data.prepare_data()


def test_a_character_cut_by_the_search_window_is_not_mistaken_for_bad_bytes(tmp_path, monkeypatch):
    from src.data import text_decoding

    monkeypatch.setattr(text_decoding, "SEGMENT", 4)
    path = tmp_path / "t.txt"
    path.write_bytes("ab\u00e9\u00e9\u00e9\u00e9\nxyz\xe9".encode() + b"\xff\n")
    assert text_decoding.locate_undecodable(path) == (2, len("ab\u00e9\u00e9\u00e9\u00e9\nxyz\xe9".encode()),
                                                      b"\xff")


# -- data_dir that is a file ------------------------------------------------------------------------
def test_data_dir_pointing_at_a_file_is_a_clear_error(tmp_path):
    generate_listops(tmp_path / "listops", progress=False, min_length=10, max_length=40, num_train=96,
                     num_val=32, num_test=32)
    tsv = tmp_path / "listops" / split_filename("train")
    with pytest.raises(NotADirectoryError, match=rf"data_dir={tsv} is a file, not a folder.*"
                                                 rf"perhaps {tmp_path / 'listops'}"):
        listops(tmp_path, data_dir=str(tsv)).prepare_data()
    imdb = write_imdb(tmp_path) / "test" / "pos" / "0_8.txt"
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        TextDataModule(str(imdb), cache_dir=str(tmp_path / "c")).prepare_data()
    run = subprocess.run(train_command(tmp_path, "logs", f"--data.init_args.data_dir={tsv}"), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert f"data.init_args.data_dir={tsv} is a file, not a folder" in run.stderr
    assert "FileExistsError" not in run.stderr
    assert all((tmp_path / "listops" / split_filename(s)).is_file() for s in SPLITS)
