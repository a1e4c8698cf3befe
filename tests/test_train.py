"""``train.py`` end to end: configs compose by axis, links are checked, a tiny run trains and tests."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from src.callbacks.finite_loss import FiniteLossCheck
from src.callbacks.last_checkpoint import LastCheckpoint
from src.callbacks.seeding import BatchSeeds
from src.cli import TrainCLI, attention_label
from src.cli_errors import init_arguments
from src.extends import expand_extends
from src.models.components.encoder import TransformerEncoder
from src.models.lra_module import SequenceClassifier

ROOT = Path(__file__).resolve().parents[1]
TASK_CONFIGS = sorted(  # a leading underscore marks a shared base (configs/glue/_base.yaml), not a task
    p for sub in ("lra", "mlm", "glue") for p in (ROOT / "configs" / sub).glob("*.yaml")
    if not p.name.startswith("_")
) + [ROOT / "configs" / "quickstart.yaml"]
ATTENTION_CONFIGS = sorted((ROOT / "configs" / "attention").glob("*.yaml"))
TRAINER_CONFIGS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))
YOSO_KEYS = {"hash_code_len", "num_hashes", "expectation", "conv_window", "lsh_backward", "hashing"}


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
        f"{data}data_dir={tmp_path / 'listops'}", f"{data}cache_dir={tmp_path / 'cache'}",
        f"{data}num_train=96", f"{data}num_val=32",
        f"{data}num_test=32", f"{data}batch_size=16", f"{data}min_tree_length=10",
        f"{data}max_tree_length=40", f"{data}max_length=48", f"{data}num_workers=0",
        f"{encoder}dim=16", f"{encoder}ffn_dim=32", f"{encoder}head_dim=8",
        "--trainer.max_steps=6", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--model.init_args.warmup_steps=2", "--throughput.window_size=2",
    ]


@pytest.fixture(scope="module")
def parser():
    """One CLI parser, reused to parse every combination in-process (a subprocess each is slow)."""
    cli = TrainCLI(auto_configure_optimizers=False, run=False,
                   args=["--config", str(ROOT / "configs" / "quickstart.yaml")])
    return cli.parser


def parse(parser, *configs: Path):
    args = [part for config in configs for part in ("--config", str(config))]
    return parser.parse_args(expand_extends(args))


def attention_of(config):
    return config.model.init_args.encoder.init_args.attention


def task_tau(parser, task: Path) -> int | None:
    return attention_of(parse(parser, task)).init_args.get("hash_code_len")


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_task_attention_trainer_combination_parses_and_keeps_tau(parser, task):
    tau = task_tau(parser, task)
    assert tau is not None, f"{task} must state its tau (hash_code_len)"
    for attention in ATTENTION_CONFIGS:
        overlay = yaml.safe_load(attention.read_text())
        assert "hash_code_len" not in str(overlay), f"{attention.name} must not state tau"
        for trainer in TRAINER_CONFIGS:
            config = parse(parser, task, attention, trainer)
            chosen = attention_of(config)
            args = dict(vars(chosen.init_args)) if chosen.get("init_args") else {}
            if chosen.class_path.endswith("YOSOAttention"):
                assert args["hash_code_len"] == tau, (task.name, attention.name)
                m = re.search(r"yoso(?:_c)?_(\d+)", attention.stem)
                if m:
                    assert args["num_hashes"] == int(m.group(1))
                    assert (args["conv_window"] == 31) == ("_c_" in attention.stem)
            else:  # YOSO's keys do not leak into another class (one may define a key of the same name)
                leaked = (YOSO_KEYS - set(init_arguments(chosen.class_path))) & set(args)
                assert not leaked, (attention.name, args)


def test_overlays_name_the_variants_they_define(parser):
    task = ROOT / "configs" / "lra" / "listops.yaml"
    labels = {a.stem: attention_label(attention_of(parse(parser, task, a))) for a in ATTENTION_CONFIGS}
    for stem, label in labels.items():
        assert label == stem, (stem, label)


def test_quickstart_states_only_what_differs_from_listops():
    text = (ROOT / "configs" / "quickstart.yaml").read_text()
    assert "extends: lra/listops.yaml" in text
    assert "class_path: src.models.lra_module" not in text


FIRST_STEP = "RecordCallbacks: first training step"


class RecordCallbacks(Callback):
    """Write the classes of ``trainer.callbacks``, in order, to ``path``; mark the first step on stderr."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = [f"{type(cb).__module__}.{type(cb).__qualname__}" for cb in trainer.callbacks]
        self.path.write_text(json.dumps(names))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == 0:
            print(FIRST_STEP, file=sys.stderr, flush=True)


def config_classes(node: object) -> list[str]:
    """Every ``class_path`` in a config, depth first."""
    if isinstance(node, dict):
        own = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return own + [c for value in node.values() for c in config_classes(value)]
    if isinstance(node, list):
        return [c for value in node for c in config_classes(value)]
    return []


def load_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One tiny quickstart run (fit, test) that records its callbacks: (process, run folder, record)."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    record = tmp_path / "callbacks.json"
    recorder = json.dumps({"class_path": "tests.test_train.RecordCallbacks",
                           "init_args": {"path": str(record)}})
    done = run_train("--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path),
                     f"--trainer.callbacks+={recorder}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "listops" / "basic_train.tsv").exists()
    run_dirs = list((tmp_path / "logs" / "quickstart" / "yoso_32").glob("version_*"))
    assert len(run_dirs) == 1, list((tmp_path / "logs").rglob("*"))
    return done, run_dirs[0], record


@pytest.mark.slow
def test_quickstart_runs_checkpoints_logs_tests_and_rebuilds(quickstart):
    done, run_dir, _ = quickstart
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert best and (run_dir / "config.yaml").exists()

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc",
                "train/device/items_per_sec", "resources/train_time_s"):
        assert tag in scalars, (tag, scalars)
    assert any(tag.startswith("lr-") for tag in scalars), scalars
    # no hp_metric (loggers have default_hp_metric=False): HPARAMS shows val/acc_best instead
    assert "hp_metric" not in scalars and "hp_metric" not in done.stdout
    experiment = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["val/acc_best"]

    match = re.search(r"test/acc = ([0-9.]+)", done.stdout)
    assert match, done.stdout[-2000:]

    # the checkpoint alone rebuilds the model: same class, attention, tau, weights
    model = SequenceClassifier.load_from_checkpoint(best[0], weights_only=True)
    attention = model.encoder.layers[0].attention.attention
    assert (attention.options.num_hashes, attention.options.hash_code_len) == (32, 8)
    state = torch.load(best[0], weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_saved_config_names_every_callback_that_ran(quickstart):
    """config.yaml lists each callback class the trainer ran, except Lightning's own progress bar,
    model summary and the SaveConfigCallback that writes config.yaml (trainer flags, not callbacks)."""
    _, run_dir, record = quickstart
    order = [load_class(c) for c in json.loads(record.read_text())]
    lightning_own = (ProgressBar, ModelSummary, SaveConfigCallback)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    listed = [k for k in map(load_class, config_classes(config)) if issubclass(k, Callback)]
    assert sorted(map(repr, listed)) == sorted(repr(k) for k in order if not issubclass(k, lightning_own))
    # seeding and the finite-loss check run before anything that writes a checkpoint
    first_saver = min(i for i, k in enumerate(order) if issubclass(k, (ModelCheckpoint, LastCheckpoint)))
    assert order.index(BatchSeeds) < first_saver and order.index(FiniteLossCheck) < first_saver


@pytest.mark.slow
def test_no_library_warning_before_training_starts(quickstart):
    """Nothing from an installed library warns before the first step (a new user reads every line)."""
    stderr = quickstart[0].stderr
    assert FIRST_STEP in stderr, stderr[-2000:]
    lines = stderr.split(FIRST_STEP, 1)[0].splitlines()
    # This project's own warnings (e.g. "generated ListOps data", "N sequences truncated") are
    # information about the run; a warning and the source line Python prints under it are skipped.
    own = {i for i, line in enumerate(lines) if line.startswith(str(ROOT / "src"))}
    own |= {i + 1 for i in own if i + 1 < len(lines) and lines[i + 1].startswith(" ")}
    warned = [line for i, line in enumerate(lines) if i not in own and re.search("warn", line, re.I)]
    assert not warned, "\n".join(lines)


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


class MisnamedClassifier(SequenceClassifier):
    """Calls its label count `num_labels`: the data link to `num_classes` has no target."""

    def __init__(self, encoder: TransformerEncoder, num_labels: int = 10, pooling: str = "mean") -> None:
        super().__init__(encoder, num_labels, pooling)


def test_a_link_without_target_fails_loudly(tmp_path):
    done = run_train("--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path),
                     "--model.class_path=tests.test_train.MisnamedClassifier", timeout=120)
    assert done.returncode != 0
    assert "num_classes" in done.stderr and "MisnamedClassifier" not in done.stdout
    assert "ListOpsDataModule.num_classes = 10" in done.stderr, done.stderr[-2000:]


def test_print_config_of_a_composition_keeps_the_task_tau():
    done = run_train("--config", "configs/lra/listops.yaml", "--config", "configs/attention/yoso_c_16.yaml",
                     "--config", "configs/trainer/gpu.yaml", "--print_config", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"hash_code_len: 11\n\s+num_hashes: 16\n\s+expectation: false\n\s+conv_window: 31",
                     done.stdout), done.stdout


def test_bad_override_is_a_clear_error():
    done = run_train("--config", "configs/quickstart.yaml", "--model.init_args.head_hidden=many", timeout=120)
    assert done.returncode != 0
    assert "head_hidden" in done.stderr


def test_no_arguments_prints_usage():
    done = run_train(timeout=120)
    assert done.returncode != 0
    assert "--config configs/quickstart.yaml" in done.stderr
