"""scripts/lra_grid.py: one train.py command per task x attention, printed or run in order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from src.lra_tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lra_grid", ROOT / "scripts" / "lra_grid.py")
lra_grid = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lra_grid
_spec.loader.exec_module(lra_grid)


def test_print_gives_one_command_per_pair_tasks_outermost(capsys):
    code = lra_grid.main(["--tasks", "text", "image", "--attentions", "softmax", "yoso_c_16",
                          "--trainer", "gpu", "--print",
                          "--extra", "--trainer.max_steps=10", "--data.init_args.data_dir=/d ir"])
    assert code == 0
    extra = "--trainer.max_steps=10 '--data.init_args.data_dir=/d ir'"
    assert capsys.readouterr().out.splitlines() == [
        f"python train.py --config configs/lra/{task}.yaml --config configs/attention/{attention}.yaml "
        f"--config configs/trainer/gpu.yaml {extra}"
        for task in ("text", "image") for attention in ("softmax", "yoso_c_16")
    ]


def test_all_expands_to_every_task_and_overlay(capsys):
    assert lra_grid.main(["--tasks", "all", "--attentions", "all", "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()
    overlays = sorted(p.stem for p in (ROOT / "configs" / "attention").glob("*.yaml"))
    assert len(lines) == len(TASKS) * len(overlays)
    first = f"configs/attention/{overlays[0]}.yaml"
    assert lines[0] == f"python train.py --config {TASKS['listops'].config} --config {first}"
    assert all((ROOT / part).is_file() for line in lines for part in line.split() if part.endswith(".yaml"))


@pytest.mark.parametrize("args", [["--tasks", "imdb", "--attentions", "softmax"],
                                  ["--tasks", "text", "--attentions", "yoso_64"],
                                  ["--tasks", "text", "--attentions", "softmax", "--trainer", "tpu"]])
def test_unknown_names_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lra_grid.main([*args, "--print"])
    assert exit_info.value.code == 2
    assert "unknown" in capsys.readouterr().err


@pytest.mark.parametrize(("keep_going", "expected_calls"), [(False, 1), (True, 2)])
def test_runs_in_order_from_the_repository_and_reports_failures(monkeypatch, capsys, keep_going,
                                                                expected_calls):
    calls = []

    def fake_call(command, cwd):
        calls.append((command, cwd))
        return 1  # every run fails

    monkeypatch.setattr(lra_grid.subprocess, "call", fake_call)
    args = ["--tasks", "listops", "--attentions", "softmax", "yoso_16"]
    args += ["--keep_going"] if keep_going else []
    assert lra_grid.main(args) == 1
    assert len(calls) == expected_calls
    command, cwd = calls[0]
    assert command[:2] == [sys.executable, "train.py"] and cwd == ROOT
    assert "failed:" in capsys.readouterr().err
