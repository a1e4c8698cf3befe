"""Two CPU processes under DDP (gloo) run the quickstart: equal weights, global metrics, exact test counts."""

from __future__ import annotations

import json
import re

import pytest
import torch
from lightning.pytorch import Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.lra.listops_datamodule import ListOpsDataModule
from src.models.lra_module import SequenceClassifier
from tests.test_resume import overrides
from tests.test_train import run_train

TEST_EXAMPLES = 33  # odd: the two ranks get 17 and 16; DistributedSampler would repeat one


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path):
    dumps = tmp_path / "dumps"
    root = tmp_path / "run"
    done = run_train(
        *overrides(tmp_path, root),
        "--config", "configs/attention/softmax.yaml",  # deterministic at test time: exact comparison below
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        "--trainer.max_steps=4", "--trainer.val_check_interval=5",  # ends before its first validation
        f"--data.init_args.num_test={TEST_EXAMPLES}", "--run_test=true",
        "--trainer.callbacks+={\"class_path\": \"tests.run_helpers.DumpRankState\", "
        f"\"init_args\": {{\"folder\": \"{dumps}\"}}}}",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Test (final weights: no validation ran" in done.stdout, done.stdout[-2000:]
    folder = root / "quickstart" / "softmax" / "version_0"  # under default_root_dir

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
