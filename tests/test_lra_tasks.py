"""The task registry (``src/lra_tasks.py``) and ``configs/lra/`` list the same tasks; every new
LRA task config trains, tests and logs through ``train.py`` on its tiny fixture, and
``scripts/lra_table.py`` turns those finished runs into the expected table rows."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.lra_tasks import REFERENCE_AVERAGE, TASKS
from tests.data.lra.fixtures import write_aan, write_cifar, write_imdb, write_pathfinder

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lra_table", ROOT / "scripts" / "lra_table.py")
lra_table = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lra_table
_spec.loader.exec_module(lra_table)

def test_registry_and_task_configs_list_the_same_tasks():
    """A new task is one config plus one registry line; neither may be forgotten."""
    files = {p.stem for p in (ROOT / "configs" / "lra").glob("*.yaml")
             if not p.name.startswith("_") and not p.stem.endswith("_quickstart")}  # reduced-scale runs
    assert files == set(TASKS)
    for name, task in TASKS.items():
        assert task.config_path.is_file(), task.config
        assert task.config_path.resolve() == (ROOT / "configs" / "lra" / f"{name}.yaml").resolve()


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_config_names_its_log_folder_and_states_its_tau(name):
    """``lra_table.py`` looks for runs under ``logs/<name>/``; the base's tau is only a placeholder."""
    config = yaml.safe_load(TASKS[name].config_path.read_text())
    assert config["extends"] == "_base.yaml"
    assert config["trainer"]["logger"]["init_args"]["name"] == name
    attention = config["model"]["init_args"]["encoder"]["init_args"]["attention"]
    assert attention["init_args"]["hash_code_len"] >= 1


def test_the_published_reference_average_is_the_mean_of_the_tasks():
    mean = sum(task.reference_acc for task in TASKS.values()) / len(TASKS)
    assert round(mean, 2) == REFERENCE_AVERAGE


# task -> (attention overlay, data overrides); two attentions so the table has two rows
RUNS: dict[str, tuple[str, list[str]]] = {
    "text": ("softmax", ["max_length=64", "pad_to=64", "num_workers=1"]),
    "retrieval": ("yoso_16", ["max_length=16", "pad_to=16"]),
    "image": ("softmax", []),
    "pathfinder": ("yoso_16", []),
}


def command(task: str, attention: str, data_dir: Path, tmp: Path, data_options: list[str]) -> list[str]:
    data = "--data.init_args."
    encoder = "--model.init_args.encoder.init_args."
    return [
        sys.executable, "train.py", "--config", TASKS[task].config,
        "--config", f"configs/attention/{attention}.yaml", "--config", "configs/trainer/cpu.yaml",
        f"{data}data_dir={data_dir}", f"{data}cache_dir={tmp / 'cache'}", f"{data}batch_size=4",
        *(f"{data}{option}" for option in data_options),
        f"{encoder}dim=16", f"{encoder}ffn_dim=32", f"{encoder}head_dim=8",
        "--model.init_args.head_hidden=16",
        "--model.init_args.warmup_steps=1", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp / 'logs'}",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The four task runs, started together (independent processes) and awaited."""
    tmp = tmp_path_factory.mktemp("lra_tasks")
    data_dirs = {
        "text": write_imdb(tmp / "imdb"),
        "retrieval": write_aan(tmp / "aan"),
        "image": write_cifar(tmp / "cifar", per_batch=4)[0],
        "pathfinder": write_pathfinder(tmp / "pf", count=20)[0],
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = {
        task: subprocess.Popen(command(task, attention, data_dirs[task], tmp, options), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for task, (attention, options) in RUNS.items()
    }
    done = {}
    for task, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        done[task] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return tmp / "logs", done


def scalars(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


@pytest.mark.slow
@pytest.mark.parametrize("task", list(RUNS))
def test_task_config_trains_tests_and_logs_resources(finished, task):
    logs, done = finished
    run = done[task]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Test (best checkpoint" in run.stdout, run.stdout[-2000:]
    run_dirs = sorted((logs / task / RUNS[task][0]).glob("version_*"))
    assert len(run_dirs) == 1
    assert (run_dirs[0] / "checkpoints" / "last.ckpt").is_file()
    tags = set(scalars(run_dirs[0]).Tags()["scalars"])
    for tag in ("train/loss", "val/acc", "test/acc", "resources/train_time_s", "resources/peak_memory_mib"):
        assert tag in tags, (task, tag, tags)


@pytest.mark.slow
def test_table_of_the_finished_runs(finished, tmp_path):
    logs, done = finished
    assert all(run.returncode == 0 for run in done.values())
    assert lra_table.main([str(logs), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "lra_table.md").read_text().splitlines()

    def cell(task: str, attention: str, tag: str) -> float | None:
        if RUNS.get(task, ("",))[0] != attention:
            return None
        return scalars(logs / task / attention / "version_0").Scalars(tag)[-1].value

    for attention in ("softmax", "yoso_16"):
        accuracies = [cell(t, attention, "test/acc") for t in lra_table.TASKS]
        times = [cell(t, attention, "resources/train_time_s") for t in lra_table.TASKS]
        peaks = [cell(t, attention, "resources/peak_memory_mib") for t in lra_table.TASKS]
        shown = [f"{100 * a:.2f}" if a is not None else "–" for a in accuracies]
        total = sum(t for t in times if t is not None) / 60
        peak = max(p for p in peaks if p is not None)
        assert f"| {attention} | {' | '.join(shown)} | – | {total:.1f} | {peak:.0f} RSS |" in lines, lines
        per_task = [f"{t / 60:.1f} / {p:.0f} RSS" if t is not None else "–" for t, p in zip(times, peaks)]
        assert f"| {attention} | {' | '.join(per_task)} |" in lines
    assert (tmp_path / "lra_accuracy_vs_time.png").is_file()
