"""Exact resume: a run killed after a checkpoint and resumed ends where an uninterrupted run ends.

Also: SIGTERM saves ``last.ckpt`` before exiting, ``--ckpt_path last`` finds the newest
``last.ckpt``, ``last.ckpt`` holds the end state of fit, and TensorBoard serves the scalars.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_train import ROOT, run_train

STEPS = 8  # 6 batches per epoch: the resumed run crosses an epoch boundary


def overrides(data: Path, root: Path) -> list[str]:
    """A tiny quickstart: 96 examples, dim 16, checkpoints every 2 steps, validation every 3."""
    d, e = "--data.init_args.", "--model.init_args.encoder.init_args."
    return [
        "--config", "configs/quickstart.yaml",
        f"{d}data_dir={data / 'listops'}", f"{d}cache_dir={data / 'cache'}", f"{d}num_train=96",
        f"{d}num_val=32", f"{d}num_test=32", f"{d}batch_size=16", f"{d}min_tree_length=10",
        f"{d}max_tree_length=40", f"{d}max_length=48", f"{d}num_workers=0",
        f"{e}dim=16", f"{e}ffn_dim=32", f"{e}head_dim=8",
        f"--trainer.max_steps={STEPS}", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--model.init_args.warmup_steps=2",
        "--last_checkpoint.every_n_train_steps=2", "--throughput.window_size=2", "--run_test=false",
        f"--trainer.default_root_dir={root}",
    ]


def signal_at(step: int, name: str) -> str:
    return ("--trainer.callbacks+={\"class_path\": \"tests.run_helpers.SignalAtStep\", "
            f"\"init_args\": {{\"step\": {step}, \"signal_name\": \"{name}\"}}}}")


def run_dir(root: Path, version: int) -> Path:
    return root / "quickstart" / "yoso_32" / f"version_{version}"


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def train_losses(folder: Path) -> dict[int, float]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    done = run_train(*overrides(base, base / "straight"))
    assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.mark.slow
def test_last_checkpoint_holds_the_end_of_fit(uninterrupted):
    # max_steps 8 is not a validation step (3, 6): ModelCheckpoint alone would stop at 6
    last = run_dir(uninterrupted / "straight", 0) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == STEPS


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one(uninterrupted):
    base = uninterrupted
    root = base / "killed"
    killed = run_train(*overrides(base, root), signal_at(5, "SIGKILL"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = run_dir(root, 0) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the periodic one before the kill

    resumed = run_train(*overrides(base, root), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr

    expected = weights(run_dir(base / "straight", 0) / "checkpoints" / "last.ckpt")
    got = weights(run_dir(root, 1) / "checkpoints" / "last.ckpt")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=key)
    # the same per-step training losses after the resume point
    straight = train_losses(run_dir(base / "straight", 0))
    after = train_losses(run_dir(root, 1))
    assert sorted(after) == list(range(4, STEPS)), sorted(after)  # logged steps count from 0
    for step, value in after.items():
        assert value == pytest.approx(straight[step], abs=1e-6), step


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_and_exits_143(uninterrupted):
    base = uninterrupted
    root = base / "preempted"
    done = run_train(*overrides(base, root), signal_at(5, "SIGTERM"))
    assert done.returncode == 143, done.stderr[-3000:]
    last = run_dir(root, 0) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert "Stopped by SIGTERM at step 5" in done.stderr and str(last) in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_the_run_scalars(uninterrupted):
    folder = run_dir(uninterrupted / "straight", 0)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"
        tags, deadline = {}, time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                tags = _get_json(f"{base}/tags")
                if tags:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert tags, "tensorboard did not answer within 60 s"
        run, run_tags = next(iter(tags.items()))
        for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "train/device/items_per_sec"):
            assert tag in run_tags, (tag, sorted(run_tags))
        lr_tag = next(t for t in run_tags if t.startswith("lr-"))
        query = urllib.parse.urlencode
        losses = _get_json(f"{base}/scalars?{query({'run': run, 'tag': 'train/loss'})}")
        # [wall_time, step, value] rows: one per step, equal to what the event files hold
        assert [row[1] for row in losses] == list(range(STEPS))
        events = train_losses(folder)
        for _, step, value in losses:
            assert value == pytest.approx(events[step], rel=1e-6)
        rates = _get_json(f"{base}/scalars?{query({'run': run, 'tag': lr_tag})}")
        assert rates and all(row[2] >= 0 for row in rates)
        val_acc = _get_json(f"{base}/scalars?{query({'run': run, 'tag': 'val/acc'})}")
        # validations after optimizer steps 3 and 6; Lightning's logged step counts from 0
        assert [row[1] for row in val_acc] == [2, 5]
        assert all(0.0 <= row[2] <= 1.0 for row in val_acc)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
