"""``train.py`` end to end: configs compose by axis, links are checked, a tiny run trains and tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.models.components.encoder import TransformerEncoder
from src.models.lra_module import SequenceClassifier
from train import TrainCLI, attention_label, expand_extends

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
        "--model.init_args.warmup_steps=2",
    ]


@pytest.fixture(scope="module")
def parser():
    """One CLI parser, reused to parse every combination in-process (a subprocess each is slow)."""
    cli = TrainCLI(auto_configure_optimizers=False, run=False,
                   args=expand_extends(["--config", str(ROOT / "configs" / "quickstart.yaml")]))
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
            else:
                assert not YOSO_KEYS & set(args), (attention.name, args)


def test_overlays_name_the_variants_they_define(parser):
    task = ROOT / "configs" / "lra" / "listops.yaml"
    labels = {a.stem: attention_label(attention_of(parse(parser, task, a))) for a in ATTENTION_CONFIGS}
    for stem, label in labels.items():
        assert label == stem, (stem, label)


def test_quickstart_states_only_what_differs_from_listops():
    text = (ROOT / "configs" / "quickstart.yaml").read_text()
    assert "extends: lra/listops.yaml" in text
    assert "class_path: src.models.lra_module" not in text


@pytest.mark.slow
def test_quickstart_runs_checkpoints_logs_tests_and_rebuilds(tmp_path):
    done = run_train("--config", "configs/quickstart.yaml", *tiny_overrides(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "listops" / "basic_train.tsv").exists()

    run_dirs = list((tmp_path / "logs" / "quickstart" / "yoso_32").glob("version_*"))
    assert len(run_dirs) == 1, list((tmp_path / "logs").rglob("*"))
    run_dir = run_dirs[0]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert best and (run_dir / "config.yaml").exists()

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc",
                "train/tokens_per_s", "hp_metric"):
        assert tag in scalars, (tag, scalars)
    assert any(tag.startswith("lr-") for tag in scalars), scalars
    assert events.Scalars("hp_metric")[-1].value == events.Scalars("val/acc_best")[-1].value

    match = re.search(r"test/acc = ([0-9.]+)", done.stdout)
    assert match, done.stdout[-2000:]

    # the checkpoint alone rebuilds the model: same class, attention, tau, weights
    model = SequenceClassifier.load_from_checkpoint(best[0], weights_only=True)
    attention = model.encoder.layers[0].attention.attention
    assert (attention.num_hashes, attention.hash_code_len) == (32, 8)
    state = torch.load(best[0], weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


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
