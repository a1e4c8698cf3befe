"""``train.py`` end to end: a few-step quickstart run, and every config parses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
ATTENTION_CONFIGS = sorted((ROOT / "configs" / "attention").glob("*.yaml"))
TASK_CONFIGS = [c for c in CONFIGS if c not in ATTENTION_CONFIGS]


def run_train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )


def tiny_overrides(tmp_path: Path) -> list[str]:
    data = "--data.init_args."
    encoder = "--model.init_args.encoder.init_args."
    return [
        f"{data}data_dir={tmp_path / 'listops'}", f"{data}num_train=96", f"{data}num_val=32",
        f"{data}num_test=32", f"{data}batch_size=16", f"{data}min_tree_length=10",
        f"{data}max_tree_length=40", f"{data}max_length=48", f"{data}num_workers=0",
        f"{encoder}dim=16", f"{encoder}ffn_dim=32", f"{encoder}head_dim=8",
        "--trainer.max_steps=6", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--model.init_args.warmup_steps=2",
    ]


@pytest.mark.slow
def test_quickstart_runs_checkpoints_logs_and_tests(tmp_path):
    done = run_train("--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "listops" / "basic_train.tsv").exists()

    run_dirs = list((tmp_path / "logs" / "quickstart").glob("version_*"))
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert (run_dir / "config.yaml").exists()

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc",
                "train/tokens_per_s"):
        assert tag in scalars, (tag, scalars)
    assert any(tag.startswith("lr-") for tag in scalars), scalars

    match = re.search(r"test/acc = ([0-9.]+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert 0.0 <= float(match.group(1)) <= 1.0


@pytest.mark.slow
def test_resume_from_last_checkpoint(tmp_path):
    first = run_train("--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path), "--run_test=false")
    assert first.returncode == 0, first.stderr[-3000:]
    last = next((tmp_path / "logs").rglob("last.ckpt"))
    resumed = run_train(
        "--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path),
        "--trainer.max_steps=9", f"--ckpt_path={last}", "--run_test=false",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_task_configs_parse(config):
    done = run_train("--config", str(config), "--print_config", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "class_path: src.models" in done.stdout


@pytest.mark.parametrize("attention", ATTENTION_CONFIGS, ids=lambda p: p.stem)
def test_attention_configs_compose_with_listops(attention):
    done = run_train(
        "--config", "configs/lra/listops.yaml", "--config", str(attention), "--print_config", timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "softmax" if attention.stem == "softmax" else "yoso"
    assert f"attention: {expected}" in done.stdout


def test_bad_override_is_a_clear_error():
    done = run_train("--config", "configs/quickstart.yaml", "--model.init_args.pooling=max", timeout=120)
    assert done.returncode != 0
    assert "pooling" in done.stderr


def test_no_arguments_prints_usage():
    done = run_train(timeout=120)
    assert done.returncode != 0
    assert "--config configs/quickstart.yaml" in done.stderr
