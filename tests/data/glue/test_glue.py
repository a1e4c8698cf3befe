"""GLUE readers on fixture TSVs in each task's real layout, and the DataModule's pair encoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from src.data.glue.glue_datamodule import GlueDataModule, truncate_longest_first
from src.data.glue.tasks import TASKS, get_task, prediction_strings, read_split
from src.data.tokenizer import train_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "glue"


def read(task: str, file: str, strict: bool = True):
    spec = get_task(task)
    split = next(s for s in [spec.train, *spec.dev.values(), *spec.test.values()] if s.file == file)
    return read_split(FIXTURES / spec.name / file, spec, split, strict)


def test_every_task_fixture_reads_with_its_labels():
    # (task, file, examples, first label, number of text fields)
    expected = [
        ("cola", "train.tsv", 8, 1, 1), ("cola", "dev.tsv", 6, 1, 1), ("sst2", "dev.tsv", 4, 1, 1),
        ("mrpc", "train.tsv", 6, 1, 2), ("stsb", "dev.tsv", 6, 1.25, 2), ("qqp", "dev.tsv", 6, 1, 2),
        ("mnli", "dev_matched.tsv", 6, 1, 2), ("mnli", "dev_mismatched.tsv", 6, 0, 2),
        ("qnli", "train.tsv", 6, 0, 2), ("rte", "dev.tsv", 6, 0, 2), ("wnli", "train.tsv", 6, 1, 2),
    ]
    for task, file, count, first, fields in expected:
        examples = read(task, file)
        assert len(examples.texts) == count == len(examples.labels), (task, file)
        assert examples.labels[0] == pytest.approx(first), (task, file)
        assert all(len(t) == fields for t in examples.texts), (task, file)


def test_labels_map_to_their_strings_and_back():
    mnli = read("mnli", "train.tsv")
    assert mnli.labels.tolist() == [1, 0, 2, 2, 1, 0]  # entailment, contradiction, neutral, ...
    assert prediction_strings(get_task("mnli"), mnli.labels) == [
        "entailment", "contradiction", "neutral", "neutral", "entailment", "contradiction"]
    rte = read("rte", "train.tsv")
    assert prediction_strings(get_task("rte"), rte.labels)[:2] == ["entailment", "not_entailment"]
    stsb = read("stsb", "train.tsv")
    assert stsb.labels.dtype == np.float32 and stsb.labels.tolist() == pytest.approx(
        [5, 0, 4.2, 0.5, 3.8, 1.25]
    )
    assert prediction_strings(get_task("stsb"), np.array([4.2, 0.0])) == ["4.200", "0.000"]
    assert prediction_strings(get_task("cola"), np.array([1, 0])) == ["1", "0"]


def test_stray_quotes_stay_inside_their_field_and_cola_has_no_header():
    qqp = read("qqp", "dev.tsv")
    assert qqp.texts[0] == ("What is the best way to learn Python?", 'How do I learn "Python fast?')
    assert qqp.texts[1][0] == 'What does "laissez faire mean?'
    mnli = read("mnli", "dev_matched.tsv")
    assert mnli.texts[3] == ('The "club opened in 1990.', "The club is old.")
    cola = read("cola", "train.tsv")
    assert cola.texts[0] == ("The cat sat on the mat.",) and cola.labels.tolist() == [1, 0] * 4
    mrpc = read("mrpc", "train.tsv")  # its header starts with a byte-order mark
    assert mrpc.labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_test_files_have_indices_and_no_labels():
    for task in TASKS.values():
        for split in task.test.values():
            examples = read_split(FIXTURES / task.name / split.file, task, split, strict=True)
            assert examples.labels is None
            assert examples.indices.tolist() == list(range(len(examples.texts))), task.name
    qqp = read("qqp", "test.tsv")  # QQP names its index column `id`
    assert qqp.texts[0] == ('How do I learn "Python fast?', "What is the best way to learn Python?")


def test_malformed_rows_skipped_in_train_and_fatal_in_dev(tmp_path):
    with pytest.warns(UserWarning, match=r"QQP/train.tsv: skipped 1 malformed rows \(lines 8\)"):
        train = read("qqp", "train.tsv", strict=False)
    assert len(train.texts) == 6

    spec = get_task("rte")
    shutil.copytree(FIXTURES / "RTE", tmp_path / "RTE")
    dev = tmp_path / "RTE" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0]  # line 4 loses its label column
    dev.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError, match=r"RTE/dev.tsv:4: malformed row \(expected 4 tab-separated fields, got 3\)"
    ):
        read_split(dev, spec, spec.dev[""], strict=True)
    lines[3] = "3\tA sentence.\tAnother.\tmaybe"
    dev.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"dev.tsv:4: malformed row \(label 'maybe' is not one of"):
        read_split(dev, spec, spec.dev[""], strict=True)


def test_wrong_header_names_the_missing_column(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    spec = get_task("rte")
    with pytest.raises(ValueError, match="the header has no column 'sentence1'"):
        read_split(tmp_path / "dev.tsv", spec, spec.dev[""], strict=True)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    texts = [" ".join(row) for task in ("rte", "qnli", "sst2")
             for row in read(task, "train.tsv", False).texts]
    tok = train_tokenizer(texts * 5, kind="wordpiece", vocab_size=300, min_frequency=1)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.tokenizer.save(str(path))
    return path


def test_pairs_get_segments_cls_and_truncation(tmp_path, tokenizer_file):
    data = GlueDataModule("RTE", data_dir=str(FIXTURES), tokenizer=str(tokenizer_file), max_length=64,
                          batch_size=3, cache_dir=str(tmp_path))
    tok = data.tokenizer
    assert (data.num_classes, data.pooling, data.cls_id, data.vocab_size) == (
        2, "cls", tok.cls_id, tok.vocab_size
    )
    data.prepare_data()
    data.setup("fit")
    train = data.dataset("train")
    batch = data.collator()([train[i] for i in range(3)])  # the loader shuffles; the collator is its batching
    first = read("rte", "train.tsv").texts[0]
    a, b = tok.encode_batch(list(first))
    n = 1 + len(a) + 1 + len(b) + 1
    row = batch["input_ids"][0, :n].tolist()
    assert row == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    assert batch["segment_ids"][0, :n].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert batch["attention_mask"][0].sum() == n and batch["labels"].tolist() == [0, 1, 1]

    data.setup("predict")
    predict = next(iter(data.predict_dataloader()))
    assert "labels" not in predict and predict["indices"].tolist() == [0, 1, 2]

    parts = [list(range(10)), list(range(3))]
    truncate_longest_first(parts, 8)
    assert parts == [list(range(5)), list(range(3))]


def test_mnli_has_matched_and_mismatched_loaders(tmp_path, tokenizer_file):
    data = GlueDataModule("mnli", data_dir=str(FIXTURES), tokenizer=str(tokenizer_file), max_length=64,
                          cache_dir=str(tmp_path))
    assert data.num_classes == 3
    data.prepare_data()
    data.setup("validate")
    assert len(data.val_dataloader()) == 2 and len(data.test_dataloader()) == 2
    data.setup("predict")
    loaders = data.predict_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [4, 3]


def test_missing_data_and_missing_tokenizer_are_clear(tmp_path, tokenizer_file):
    data = GlueDataModule("cola", data_dir=str(tmp_path), tokenizer=str(tokenizer_file))
    with pytest.raises(FileNotFoundError,
                       match=r"GLUE CoLA data not found: missing .*CoLA/train.tsv.*glue_data"):
        data.prepare_data()
    with pytest.raises(ValueError, match="--model.init_args.init_from"):
        GlueDataModule("cola", data_dir=str(FIXTURES))
    with pytest.raises(ValueError, match="unknown GLUE task 'colaa'"):
        GlueDataModule("colaa", data_dir=str(FIXTURES), tokenizer=str(tokenizer_file))
