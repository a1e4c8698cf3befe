"""Two CPU processes under DDP (gloo) run the quickstart: equal weights, global metrics, exact test counts,
SIGTERM to the whole group saves once and resumes exactly."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.lra.listops_datamodule import ListOpsDataModule
from src.models.lra_module import SequenceClassifier
from tests.test_resume import overrides
from tests.test_signals import (
    assert_same_weights,
    record_saves,
    resume_args,
    run_in_own_group,
    saves_at,
    signal_group_at,
)
from tests.test_train import run_train

TEST_EXAMPLES = 33  # odd: the two ranks get 17 and 16; DistributedSampler would repeat one


def ddp_args(data: Path, root: Path) -> list[str]:
    """The quickstart on two CPU processes (gloo), 4 steps, no validation, then a test of 33 examples."""
    return [
        *overrides(data, root),
        "--config", "configs/attention/softmax.yaml",  # deterministic at test time: exact comparison below
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        "--trainer.max_steps=4", "--trainer.val_check_interval=5",  # ends before its first validation
        f"--data.init_args.num_test={TEST_EXAMPLES}", "--run_test=true",
    ]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One uninterrupted 2-rank run: (process, run folder, folder of the ranks' final states)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    dumps = tmp_path / "dumps"
    root = tmp_path / "run"
    done = run_train(
        *ddp_args(tmp_path, root),
        "--trainer.callbacks+={\"class_path\": \"tests.run_helpers.DumpRankState\", "
        f"\"init_args\": {{\"folder\": \"{dumps}\"}}}}",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done, root / "quickstart" / "softmax" / "version_0", dumps  # under default_root_dir


@pytest.mark.slow
def test_two_process_ddp_run(ddp_run):
    done, folder, dumps = ddp_run
    assert "Test (final weights: no validation ran" in done.stdout, done.stdout[-2000:]

    # both ranks end with identical parameters, equal to the saved end state
    rank0 = torch.load(dumps / "rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "rank1.pt", weights_only=True)
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
        assert torch.equal(value, last["state_dict"][key]), key

    # the logged training loss of each step is the mean over both ranks (equal batch sizes)
    losses = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert losses[0] != losses[1]  # different data shards (and dropout) per rank
    events = EventAccumulator(str(folder))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    for step in range(1, 5):
        expected = (losses[0][str(step)] + losses[1][str(step)]) / 2
        assert logged[step - 1] == pytest.approx(expected, rel=1e-5), step  # logged steps count from 0

    # test metrics count each of the 33 examples once: equal to one process testing the same weights
    shown = dict(re.findall(r"(test/\w+) = ([0-9.]+)", done.stdout))
    model = SequenceClassifier.load_from_checkpoint(folder / "checkpoints" / "last.ckpt", weights_only=True)
    data = ListOpsDataModule(**{k: v for k, v in last["datamodule_hyper_parameters"].items()
                                if not k.startswith("_")})
    single = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False).test(model, datamodule=data, verbose=False)[0]
    assert len(data.dataset("test")) == TEST_EXAMPLES
    assert float(shown["test/acc"]) == pytest.approx(single["test/acc"], abs=5e-5)
    assert float(shown["test/loss"]) == pytest.approx(single["test/loss"], abs=5e-5)
    # and the accuracy is a count out of 33, not out of 34
    assert round(single["test/acc"] * TEST_EXAMPLES, 4) == round(single["test/acc"] * TEST_EXAMPLES)
    assert (folder / "config.yaml").is_file()


@pytest.mark.slow
def test_sigterm_to_the_group_under_ddp_saves_once_and_resumes_exactly(ddp_run, tmp_path):
    """SIGTERM to every process (both ranks, their DataLoader workers): one save at the step, exit 143."""
    _, straight, _ = ddp_run
    root, record = tmp_path / "run", tmp_path / "saves.txt"
    args = [*ddp_args(tmp_path, root), "--data.init_args.num_workers=1", signal_group_at(2, "SIGTERM"),
            record_saves(record)]
    stopped = run_in_own_group(["train.py", *args])
    assert stopped.returncode == 143, stopped.stderr[-4000:]
    last = root / "quickstart" / "softmax" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    # every rank took part in one save at step 2 (the periodic save of step 2 is that same one)
    assert sorted(saves_at(record, 2)) == ["0 2", "1 2"], record.read_text()
    assert f"Stopped by SIGTERM at step 2; saved {last}. Resume with:" in stopped.stderr
    assert stopped.stderr.count("Stopped by SIGTERM") == 1  # rank 0 reports

    resumed = run_in_own_group([*resume_args(stopped.stderr), "--run_test=false"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_weights(root / "quickstart" / "softmax" / "version_1" / "checkpoints" / "last.ckpt",
                        straight / "checkpoints" / "last.ckpt")
