"""End to end: MLM pre-training from the quickstart config, then every GLUE task from its checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.glue.tasks import TASKS
from src.data.tokenizer import TOKENIZER_KEY, TextTokenizer
from tests.test_train import ROOT, run_train

FIXTURES = ROOT / "tests" / "fixtures" / "glue"
ENCODER = "--model.init_args.encoder.init_args."
TINY_ENCODER = [f"{ENCODER}dim=16", f"{ENCODER}ffn_dim=32", f"{ENCODER}head_dim=8", f"{ENCODER}num_heads=2"]
QUIET = ["--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]

# Runs train.main for each task in one process: nine interpreter and library start-ups would
# cost more than the runs themselves.
GLUE_DRIVER = """
import json, sys
import train
for task, args in json.loads(sys.argv[1]).items():
    metrics = train.main(args)
    print("METRICS", task, json.dumps(metrics), flush=True)
"""


def mlm_overrides(tmp_path: Path) -> list[str]:
    from pydoc_data.topics import topics

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(topics[k] for k in sorted(topics)[:25]))
    data = "--data.init_args."
    return [
        f"{data}corpus={corpus}", f"{data}cache_dir={tmp_path / 'cache'}", f"{data}tokenizer_vocab_size=300",
        f"{data}max_length=32", f"{data}batch_size=4", f"{data}val_fraction=0.2", f"{data}test_fraction=0.2",
        *TINY_ENCODER, *QUIET, "--trainer.max_steps=4", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", "--model.init_args.warmup_steps=1",
    ]


def glue_args(task: str, checkpoint: Path, tmp_path: Path) -> list[str]:
    return [
        "--config", f"configs/glue/{task}.yaml",  # no encoder: init_from gives it, and its length
        f"--model.init_args.init_from={checkpoint}",  # named once: train.py links it to the data's tokenizer
        f"--data.init_args.data_dir={FIXTURES}", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", *QUIET,
        "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--model.init_args.warmup_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]


EXPECTED_METRICS = {
    "cola": {"mcc"}, "sst2": {"acc"}, "mrpc": {"f1", "acc"}, "stsb": {"pearson", "spearman"},
    "qqp": {"acc", "f1"}, "mnli": {"acc"}, "qnli": {"acc"}, "rte": {"acc"}, "wnli": {"acc"},
}


@pytest.mark.slow
def test_mlm_quickstart_checkpoint_starts_every_glue_task(tmp_path):
    done = run_train("--config", "configs/mlm/quickstart.yaml", *mlm_overrides(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "logs" / "mlm_quickstart").glob("*/version_0"))
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert isinstance(checkpoint[TOKENIZER_KEY], str)
    assert TextTokenizer.from_checkpoint(last).vocab_size == checkpoint["state_dict"][
        "encoder.token_embedding.weight"].shape[0]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "val/ppl", "val/loss_best", "test/ppl"} <= tags, tags

    tasks = {task: glue_args(task, last, tmp_path) for task in EXPECTED_METRICS}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    glue = subprocess.run([sys.executable, "-c", GLUE_DRIVER, json.dumps(tasks)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    assert glue.returncode == 0, glue.stderr[-4000:]
    results = {line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2])
               for line in glue.stdout.splitlines() if line.startswith("METRICS ")}
    assert set(results) == set(EXPECTED_METRICS)
    for task, names in EXPECTED_METRICS.items():
        wanted = {f"test/{n}" for n in names | {"score", "loss"}}
        if task == "mnli":
            wanted |= {"test_mm/acc", "test_mm/score"}
        assert wanted <= set(results[task]), (task, results[task])

    for task in TASKS.values():
        run = next((tmp_path / "logs" / f"glue_{_config_name(task.name)}").glob("*/version_0"))
        for split in task.test.values():
            with open(run / split.leaderboard, newline="") as handle:
                rows = list(csv.reader(handle, delimiter="\t"))
            test_rows = (FIXTURES / task.name / split.file).read_text().splitlines()[1:]
            assert rows[0] == ["index", "prediction"], task.name
            assert [int(r[0]) for r in rows[1:]] == list(range(len(test_rows))), task.name
            if task.labels:
                assert {r[1] for r in rows[1:]} <= set(task.labels), task.name
            else:
                assert all(float(r[1]) == pytest.approx(float(r[1])) for r in rows[1:])


def _config_name(name: str) -> str:
    return name.lower().replace("-", "")
