"""Extending a finished run, checkpoint identity and ``--ckpt_path auto``.

* A run that ended at ``max_steps`` N, resumed with a larger ``max_steps``, trains the batches,
  seeds and learning rates of an uninterrupted run of the new length (issue 19, item 1).
* ``--ckpt_path`` refuses a checkpoint of another attention class; ``last``/``auto`` look only
  in this run's own ``<task>/<attention>`` folder; ``auto`` starts fresh when there is none.

End to end with real ``train.py`` processes on the tiny quickstart of ``tests/test_resume.py``
(6 batches per epoch, validation every 3 steps); the helpers below are checked in-process.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.lr_scheduler import ConstantLR, LinearLR, SequentialLR

from src.checkpoints import identity_differences, model_identity, reopen_unfinished_epoch, resolve_ckpt_path
from src.models.base_module import load_encoder_weights
from src.models.schedules import scheduled_steps, stretch, upgrade_state, warmup_then_decay
from tests.test_resume import overrides, run_dir, train_losses, weights
from tests.test_robustness import tiny_classifier
from tests.test_train import run_train

PEAK = 1e-3  # the quickstart's learning rate
CONSTANT = ["--model.init_args.schedule=constant", "--model.init_args.warmup_steps=0"]
SOFTMAX = ["--config", "configs/attention/softmax.yaml"]


def train(base: Path, root: Path, steps: int, *extra: str) -> str:
    """One tiny run that must succeed; returns its stdout and stderr together."""
    done = run_train(*overrides(base, root), f"--trainer.max_steps={steps}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def logged(folder: Path, prefix: str) -> dict[int, float]:
    """The scalar series whose tag starts with ``prefix`` (e.g. ``lr-``), by logged step."""
    events = EventAccumulator(str(folder))
    events.Reload()
    tag = next(t for t in events.Tags()["scalars"] if t.startswith(prefix))
    return {e.step: e.value for e in events.Scalars(tag)}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def constant_runs(tmp_path_factory) -> SimpleNamespace:
    """A softmax run, then a YOSO run of 5 steps and its extension to 10 (both ``--ckpt_path auto``,
    in the same log root), and an uninterrupted YOSO run of 10 steps; constant learning rate."""
    base = tmp_path_factory.mktemp("extend")
    root = base / "extended"
    softmax = train(base, root, 2, *CONSTANT, *SOFTMAX)
    first = train(base, root, 5, *CONSTANT, "--ckpt_path=auto")
    extended = train(base, root, 10, *CONSTANT, "--ckpt_path=auto")
    train(base, base / "straight", 10, *CONSTANT)
    return SimpleNamespace(base=base, root=root, softmax=softmax, first=first, extended=extended)


@pytest.mark.slow
def test_auto_starts_fresh_beside_another_attentions_checkpoint(constant_runs):
    runs = constant_runs
    assert (runs.root / "quickstart" / "softmax" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    own = runs.root / "quickstart" / "yoso_32"
    assert f"--ckpt_path auto: no last.ckpt under {own}; starting a new run" in runs.first
    assert "Restoring states" not in runs.first


@pytest.mark.slow
def test_auto_resumes_its_own_run_and_says_it_extends_it(constant_runs):
    last = run_dir(constant_runs.root, 0) / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in constant_runs.extended
    said = ("Resumed at step 5 of a run scheduled for max_steps 5; continuing with the constant schedule "
            "of max_steps 10, as if the run had started with it: LR 0.001 at step 5")
    assert said in constant_runs.extended


@pytest.mark.slow
def test_end_of_fit_resume_equals_the_uninterrupted_run(constant_runs):
    base, root = constant_runs.base, constant_runs.root
    straight = run_dir(base / "straight", 0)
    expected = weights(straight / "checkpoints" / "last.ckpt")
    assert largest_difference(weights(run_dir(root, 1) / "checkpoints" / "last.ckpt"), expected) <= 1e-6
    # the same batches with the same seeds: equal losses, logged at the same steps (from 0)
    after, before = train_losses(run_dir(root, 1)), train_losses(straight)
    assert sorted(after) == [5, 6, 7, 8, 9], sorted(after)
    for step, value in after.items():
        assert value == pytest.approx(before[step], abs=1e-6), step
    # validations at the same steps as the uninterrupted run (after steps 6 and 9), none repeated
    assert sorted(logged(run_dir(root, 1), "val/acc")) == [5, 8]


@pytest.mark.slow
def test_a_softmax_checkpoint_does_not_resume_a_yoso_run(constant_runs):
    softmax_last = constant_runs.root / "quickstart" / "softmax" / "version_0" / "checkpoints" / "last.ckpt"
    done = run_train(*overrides(constant_runs.base, constant_runs.base / "refused"), *CONSTANT,
                     f"--ckpt_path={softmax_last}")
    assert done.returncode == 1, done.stderr[-3000:]
    assert (f"error: --ckpt_path: {softmax_last} was written by another model (attention: checkpoint "
            "src.models.components.attention.SoftmaxAttention, this run "
            "src.models.components.attention.YOSOAttention)") in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not list((constant_runs.base / "refused").rglob("*.ckpt"))


@pytest.mark.slow
def test_extending_a_finished_linear_decay_trains_on(tmp_path):
    """6 steps decayed to LR 0; max_steps 10 continues with the 10-step schedule (not at LR 0)."""
    root = tmp_path / "runs"
    train(tmp_path, root, 6)
    finished = weights(run_dir(root, 0) / "checkpoints" / "last.ckpt")
    extended = train(tmp_path, root, 10, "--ckpt_path=last")
    assert ("Resumed at step 6 of a run scheduled for max_steps 6; continuing with the linear schedule "
            "of max_steps 10, as if the run had started with it: LR 0.0005 at step 6") in extended
    # warm-up 2, then linear decay over 8 steps: step s has PEAK * (1 - (s - 2) / 8)
    rates = logged(run_dir(root, 1), "lr-")
    assert sorted(rates) == [6, 7, 8, 9], sorted(rates)
    for step, rate in rates.items():
        assert rate == pytest.approx(PEAK * (1 - (step - 2) / 8), rel=1e-6), step
    assert largest_difference(weights(run_dir(root, 1) / "checkpoints" / "last.ckpt"), finished) > 1e-5


# -- the pieces, in-process --------------------------------------------------------------------
def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)


def run_schedule(scheduler, steps: int) -> None:
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()


def test_stretch_continues_a_finished_schedule_as_if_it_had_been_longer():
    short = warmup_then_decay(optimizer(), 2, 6, "linear")
    run_schedule(short, 6)
    assert short.optimizer.param_groups[0]["lr"] == 0.0
    restored = warmup_then_decay(optimizer(), 2, 10, "linear")  # what configure_optimizers builds
    restored.load_state_dict(short.state_dict())  # ... and Lightning then restores
    assert scheduled_steps(short.state_dict()) == 6
    assert stretch(restored, 10) == pytest.approx(PEAK * 0.5)
    long = warmup_then_decay(optimizer(), 2, 10, "linear")
    run_schedule(long, 6)
    for _ in range(4):
        assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(long.optimizer.param_groups[0]["lr"])
        run_schedule(restored, 1)
        run_schedule(long, 1)


def test_a_chained_scheduler_state_of_older_checkpoints_still_loads():
    opt = optimizer()
    warmup, decay = LinearLR(opt, 1e-3, 1.0, total_iters=2), LinearLR(opt, 1.0, 0.0, total_iters=4)
    legacy = SequentialLR(opt, [warmup, decay], milestones=[2])
    run_schedule(legacy, 6)
    state = legacy.state_dict()
    assert scheduled_steps(state) == 6
    assert scheduled_steps(ConstantLR(optimizer(), factor=1.0, total_iters=0).state_dict()) is None
    restored = warmup_then_decay(optimizer(), 2, 10, "linear")
    restored.load_state_dict(upgrade_state(state))
    assert restored.last_epoch == 6
    assert stretch(restored, 10) == pytest.approx(PEAK * 0.5)


def fit_loops(epochs: tuple[int, int, int, int], batches: tuple[int, int, int, int], last: bool) -> dict:
    """A checkpoint's ``loops`` part: (ready, started, processed, completed) of epochs and batches."""
    def progress(counts: tuple[int, int, int, int]) -> dict:
        four = dict(zip(("ready", "started", "processed", "completed"), counts))
        return {"current": dict(four), "total": dict(four)}
    return {"epoch": epochs[3], "loops": {"fit_loop": {
        "epoch_progress": progress(epochs),
        "epoch_loop.batch_progress": {**progress(batches), "is_last_batch": last},
        "epoch_loop.state_dict": {"_batches_that_stepped": batches[3]},
    }}}


def test_only_a_checkpoint_of_an_ended_fit_is_reopened():
    ended = fit_loops((1, 1, 1, 1), (5, 5, 5, 5), last=False)  # max_steps 5 of a 6-batch epoch
    assert reopen_unfinished_epoch(ended)
    # what a checkpoint written after the same batch (on_train_batch_end) holds
    assert ended == fit_loops((1, 1, 0, 0), (5, 5, 5, 4), last=False) | {"epoch": 0}
    assert ended["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 4
    during = fit_loops((1, 1, 0, 0), (5, 5, 5, 4), last=False)  # a periodic or SIGTERM save
    assert not reopen_unfinished_epoch(during)
    epoch_end = fit_loops((2, 2, 2, 1), (6, 6, 6, 6), last=True)  # ModelCheckpoint at the epoch's end
    assert not reopen_unfinished_epoch(epoch_end)


def encoder_hparams(attention: str, **shape: int) -> dict:
    args = {"attention": {"class_path": f"src.models.components.attention.{attention}"},
            "dim": 16, "depth": 2, "num_heads": 2, "head_dim": 8, "ffn_dim": 32, "vocab_size": 18, **shape}
    return {"_class_path": "src.models.lra_module.SequenceClassifier",
            "encoder": {"class_path": "src.models.components.encoder.TransformerEncoder", "init_args": args}}


def test_identity_differences_name_both_sides():
    own = model_identity(encoder_hparams("YOSOAttention"))
    assert identity_differences(encoder_hparams("YOSOAttention"), own) == []
    assert identity_differences(None, own) == []  # a checkpoint without hyper-parameters: shapes decide
    assert identity_differences(encoder_hparams("YOSOAttention", depth=4, num_heads=4), own) == [
        "depth: checkpoint 4, this run 2", "num_heads: checkpoint 4, this run 2"]
    mlm = "src.models.mlm_module.MaskedLM"
    other_task = {**encoder_hparams("YOSOAttention"), "_class_path": mlm}
    assert identity_differences(other_task, own) == [
        f"task module: checkpoint {mlm}, this run src.models.lra_module.SequenceClassifier"]
    assert identity_differences(other_task, own, ("attention",)) == []  # init_from compares the encoder only


def test_init_from_another_attention_warns_naming_both_and_loads(tmp_path):
    source, shape = tiny_classifier(), {"depth": 1, "vocab_size": 12}  # tiny_classifier's encoder
    path = tmp_path / "softmax.ckpt"
    saved = encoder_hparams("SoftmaxAttention", **shape)
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": saved}, path)
    target = tiny_classifier()
    said = (r"init_from .*softmax\.ckpt was written by another encoder \(attention: checkpoint "
            r"\S+SoftmaxAttention, this run \S+YOSOAttention\)")
    with pytest.warns(UserWarning, match=said):
        load_encoder_weights(target.encoder, path, model_identity(encoder_hparams("YOSOAttention", **shape)))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value), key


def test_last_and_auto_look_only_in_this_runs_folder(tmp_path):
    other = tmp_path / "quickstart" / "softmax" / "version_0" / "checkpoints"
    other.mkdir(parents=True)
    (other / "last.ckpt").write_bytes(b"")
    logger = SimpleNamespace(save_dir=str(tmp_path), name="quickstart/yoso_32")
    trainer = SimpleNamespace(logger=logger, checkpoint_callback=None, default_root_dir=str(tmp_path))
    assert resolve_ckpt_path("auto", trainer) is None
    with pytest.raises(SystemExit, match=f"no last.ckpt under {tmp_path / 'quickstart' / 'yoso_32'}"):
        resolve_ckpt_path("last", trainer)
    own = tmp_path / "quickstart" / "yoso_32" / "version_3" / "checkpoints"
    own.mkdir(parents=True)
    (own / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path("auto", trainer) == str(own / "last.ckpt")
    assert resolve_ckpt_path("last", trainer) == str(own / "last.ckpt")
