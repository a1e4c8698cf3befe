"""LRA Image (CIFAR-10 grey): the restricted unpickler, grey conversion, the LRA split, .npz input."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from src.data.lra.cifar10 import ForbiddenGlobalError, load_batch, to_grey
from src.data.lra.image_datamodule import ImageDataModule
from tests.data.lra.fixtures import write_cifar


class RunsAShellCommand:
    """What a tampered batch could hold: unpickling it calls os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": RunsAShellCommand(str(marker)), b"labels": []}, protocol=2))
    with pytest.raises(ForbiddenGlobalError,
                       match=rf"{path}: refusing to load the global '(posix|os|nt)\.system'"):
        load_batch(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(ForbiddenGlobalError, match=r"(builtins|__builtin__)\.eval"):
        load_batch(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_official_batches_load_with_the_numpy_globals_only(tmp_path, protocol):
    folder, written = write_cifar(tmp_path, per_batch=3, protocol=protocol)
    data, labels = load_batch(folder / "data_batch_2")
    assert np.array_equal(data, written["data_batch_2"][0]) and data.dtype == np.uint8
    assert labels.tolist() == written["data_batch_2"][1]


def test_grey_is_the_weighted_sum_rounded():
    row = np.zeros((1, 3072), dtype=np.uint8)
    for channel, value in enumerate((10, 200, 30)):  # pixel 0: R, G, B
        row[0, channel * 1024] = value
    for channel in range(3):
        row[0, channel * 1024 + 1023] = 255  # last pixel white
    row[0, 1] = 1  # pixel 1: R = 1 only -> 0.2989 -> 0
    row[0, 1024 + 2], row[0, 2048 + 2] = 1, 1  # pixel 2: G = B = 1 -> 0.701 -> 1
    grey = to_grey(row)
    assert grey.shape == (1, 1024) and grey.dtype == np.uint8
    # 0.2989 * 10 + 0.5870 * 200 + 0.1140 * 30 = 2.989 + 117.4 + 3.42 = 123.809
    assert grey[0, :3].tolist() == [124, 0, 1]
    assert grey[0, 1023] == 255  # 0.9999 * 255 = 254.97
    assert grey[0, 3:1023].max() == 0


def expected_ids(data: np.ndarray) -> np.ndarray:
    """Grey ids written out with the channel planes of the batch layout."""
    planes = data.reshape(len(data), 3, 1024).astype(np.float64)
    grey = np.floor(0.2989 * planes[:, 0] + 0.5870 * planes[:, 1] + 0.1140 * planes[:, 2] + 0.5)
    return grey.astype(np.int64) + 1


def test_last_tenth_of_train_validates_and_the_test_batch_tests(tmp_path):
    folder, written = write_cifar(tmp_path, per_batch=4)
    dm = ImageDataModule(str(folder), batch_size=5, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    assert (dm.vocab_size, dm.num_classes) == (257, 10)
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    splits = {"train": (train_data[:18], train_labels[:18]), "val": (train_data[18:], train_labels[18:]),
              "test": written["test_batch"]}
    for split, (data, labels) in splits.items():
        dataset = dm.load_split(split)
        assert len(dataset) == len(labels)
        ids = np.stack([np.asarray(dataset[i]["input_ids"], dtype=np.int64) for i in range(len(dataset))])
        assert np.array_equal(ids, expected_ids(data)), split
        assert dataset.arrays["labels"].tolist() == list(labels)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"].shape == (4, 1024) and bool(batch["attention_mask"].all())


def test_an_npz_with_images_or_rows_gives_the_same_arrays(tmp_path):
    folder, written = write_cifar(tmp_path, per_batch=2)
    train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    images = train.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    test_data, test_labels = written["test_batch"]
    np.savez(tmp_path / "cifar10.npz", train_data=images, train_labels=labels,
             test_data=test_data, test_labels=test_labels)
    from_batches = ImageDataModule(str(folder), cache_dir=str(tmp_path / "c"))
    from_npz = ImageDataModule(str(tmp_path / "cifar10.npz"), cache_dir=str(tmp_path / "c"))
    for split in ("train", "val", "test"):
        a, b = from_batches.build_split(split), from_npz.build_split(split)
        assert all(np.array_equal(a[k], b[k]) for k in a), split


def test_malformed_batches_and_missing_files_are_clear_errors(tmp_path):
    folder, _ = write_cifar(tmp_path, per_batch=2)
    path = folder / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(ValueError, match=rf"{path}: expected a dict with b'data' and b'labels'"):
        load_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=r"shape \[N, 3072\].*got \(2, 100\)"):
        load_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2))
    with pytest.raises(ValueError, match="labels must be 0-9"):
        load_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:40])
    with pytest.raises(ValueError, match=f"{path}: not a readable CIFAR-10 batch"):
        load_batch(path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3.*cifar-10-python\.tar\.gz"):
        ImageDataModule(str(folder), cache_dir=str(tmp_path / "c")).prepare_data()
