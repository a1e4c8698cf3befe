"""Bad config files and values: one ``error:`` line on stderr, exit 2, no traceback, before any work.

The file cases and a few value cases run real ``train.py`` processes; the other values are
checked in-process on the CLI's own parser (``check_config`` is what ``parse_arguments`` calls).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from src import cli_errors
from src.cli import TrainCLI, check_config
from src.cli_errors import ConfigError
from src.extends import expand_extends
from src.kernels import backends
from tests.test_train import ROOT, TASK_CONFIGS

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def start_train(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``train.py`` on the quickstart plus ``args`` (a bad run fails while parsing: seconds)."""
    return subprocess.Popen([sys.executable, "train.py", "--config", QUICKSTART, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def bad_files(folder: Path) -> dict[str, Path]:
    """One config file per unreadable kind."""
    contents = {
        "binary": b"trainer:\n  max_steps: 3\n\x89PNG\x00\x01\xff",
        "latin1": "# caf\u00e9\ntrainer:\n  max_steps: 3\n".encode("latin-1"),
        "syntax": b"trainer:\n  max_steps: 3\n  callbacks: [a, b\nmodel: x\n",
        "empty": b"",
    }
    for name, content in contents.items():
        (folder / f"{name}.yaml").write_bytes(content)
    return {name: folder / f"{name}.yaml" for name in contents}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every train.py case at once (each is mostly imports: together they take the time of a few)."""
    folder = tmp_path_factory.mktemp("bad_configs")
    data = f"--data.init_args.data_dir={folder / 'listops'}"  # ListOps would generate its data here
    files = bad_files(folder)
    cases = {name: (start_train("--config", str(path), data), path) for name, path in files.items()}
    cases["batch_size"] = (start_train(data, "--data.init_args.batch_size=0"), folder / "listops")
    cases["max_length"] = (start_train(data, "--data.init_args.max_length=1000000000"), folder / "listops")
    if not torch.cuda.is_available():
        cases["backend"] = (start_train(data, env={"YOSO_BACKEND": "cuda"}), folder / "listops")
    done = {}
    for name, (process, path) in cases.items():
        stdout, stderr = process.communicate(timeout=300)
        done[name] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), path)
    return done


def error_line(done: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused run (exit 2 like a parse error, no traceback)."""
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


# -- config files, through train.py --------------------------------------------------------------

def test_binary_config_file_names_the_file_and_the_offset(runs):
    done, config = runs["binary"]
    line = error_line(done)
    assert f"config file {config} is binary, not YAML text: NUL byte at offset 28 (line 3)" in line
    assert "pass a .yaml config file" in line


def test_non_utf8_config_names_the_file_byte_offset_and_line(runs):
    done, config = runs["latin1"]
    line = error_line(done)
    assert f"config file {config} is not UTF-8 text: byte 0xe9 at offset 5 (line 1); save it as UTF-8" in line


def test_yaml_syntax_error_names_the_file_and_line(runs):
    done, config = runs["syntax"]
    line = error_line(done)
    assert f"config file {config}, line 4, column 6: YAML syntax error:" in line
    assert "fix the YAML there" in line


def test_empty_config_says_it_is_empty(runs):
    done, config = runs["empty"]
    line = error_line(done)
    assert f"config file {config} is empty (no keys)" in line and "leave this --config out" in line
    assert "Unexpected config" not in line


# -- values, through train.py: refused before the data is prepared --------------------------------

@pytest.mark.parametrize(("case", "expected"), [
    ("batch_size", "data.init_args.batch_size = 0 is out of range: it must be an int >= 1"),
    ("max_length", "data.init_args.max_length = 1000000000 does not fit this machine: its position table "
                   "(1000000000 x dim 64) needs 953.7 GiB to train"),
])
def test_out_of_range_value_is_refused_before_any_data_is_prepared(runs, case, expected):
    done, data_dir = runs[case]
    line = error_line(done)
    assert expected in line
    assert "e.g. --data.init_args." in line  # the fix, as a flag
    assert not data_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_yoso_backend_cuda_without_a_gpu_names_the_variable(runs):
    done, data_dir = runs["backend"]
    assert error_line(done) == (
        "error: YOSO_BACKEND=cuda but this machine has no usable CUDA GPU "
        "(torch.cuda.is_available() is False); unset YOSO_BACKEND or set it to auto "
        "(valid values: auto, reference, cpu, cuda)")
    assert not data_dir.exists()


# -- values, in-process on the CLI's parser ------------------------------------------------------

@pytest.fixture(scope="module")
def parser():
    return TrainCLI(auto_configure_optimizers=False, run=False, args=["--config", QUICKSTART]).parser


def check(parser, *args: str) -> None:
    check_config(parser.parse_args(expand_extends(["--config", QUICKSTART, *args])))


def refused(parser, capsys, *args: str) -> str:
    """The one line ``check_config`` prints for ``args`` (and the exit code of a parse error)."""
    with pytest.raises(ConfigError) as info:
        check(parser, *args)
    assert info.value.code == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert printed == [f"error: {info.value}"]
    return printed[0]


@pytest.mark.parametrize(("flag", "expected"), [
    ("--model.init_args.learning_rate=-1",
     "model.init_args.learning_rate = -1.0 is out of range: it must be > 0 (the peak of the schedule). "
     "Fix it in the config or on the command line, e.g. --model.init_args.learning_rate 1e-4"),
    ("--model.init_args.learning_rate=0", "model.init_args.learning_rate = 0.0 is out of range"),
    ("--model.init_args.weight_decay=-1",
     "model.init_args.weight_decay = -1.0 is out of range: it must be >= 0 (0 turns it off)."),
    ("--trainer.max_steps=0",
     "trainer.max_steps = 0 is out of range: it must be >= 1, or -1 for no step limit "
     "(max_epochs then ends the run). Fix it in the config or on the command line, e.g. --trainer.max_steps"),
    ("--trainer.max_steps=-5", "trainer.max_steps = -5 is out of range"),
    ("--data.init_args.batch_size=-3", "data.init_args.batch_size = -3 is out of range"),
    ("--data.init_args.max_length=0",
     "data.init_args.max_length = 0 is out of range: it must be an int >= 1"),
])
def test_value_out_of_range(parser, capsys, flag, expected):
    assert expected in refused(parser, capsys, flag)


@pytest.mark.parametrize("flags", [
    ("--trainer.max_steps=-1", "--trainer.max_epochs=1"),  # no step limit
    ("--trainer.max_steps=1", "--data.init_args.batch_size=1", "--model.init_args.weight_decay=0"),
])
def test_boundary_values_are_accepted(parser, flags):
    check(parser, *flags)


def test_max_length_bound_is_the_position_tables_training_state(parser, capsys, monkeypatch):
    # dim 64: 16 bytes a float -> 1024 bytes a position; 1 MiB of RAM holds exactly 1024 positions.
    monkeypatch.setattr(cli_errors, "physical_memory", lambda: 1024 * 1024)
    check(parser, "--data.init_args.max_length=1024")
    line = refused(parser, capsys, "--data.init_args.max_length=1025")
    assert "needs 1.0 MiB to train" in line and "more than the 1.0 MiB of RAM" in line
    assert "(at most 1024 here)" in line


def test_every_shipped_task_config_passes_the_checks(parser):
    for task in TASK_CONFIGS:
        check_config(parser.parse_args(expand_extends(["--config", str(task)])))


def test_attention_backend_cuda_without_a_gpu_names_the_key(parser, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(parser, capsys, "--model.init_args.encoder.init_args.attention.init_args.backend=cuda")
    assert line.startswith("error: model.init_args.encoder.init_args.attention.init_args.backend='cuda' "
                           "but this machine has no usable CUDA GPU")


def test_unknown_yoso_backend_variable_lists_the_values(parser, capsys, monkeypatch):
    monkeypatch.setenv("YOSO_BACKEND", "gpu")
    line = refused(parser, capsys)
    assert line == ("error: YOSO_BACKEND=gpu is not a YOSO backend; valid values: auto, reference, cpu, cuda "
                    "(auto: compiled kernels for the tensors' device)")


def test_yoso_backend_is_not_checked_for_a_softmax_model(parser, monkeypatch):
    monkeypatch.setenv("YOSO_BACKEND", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check(parser, "--config", str(ROOT / "configs" / "attention" / "softmax.yaml"))


def test_kernel_choice_on_the_wrong_device_names_the_variable(monkeypatch):
    """The last line, for code that builds models without train.py."""
    monkeypatch.setenv("YOSO_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"\(from \$YOSO_BACKEND\) runs on cuda tensors, got cpu tensors; "
                                         r"move the tensors or unset YOSO_BACKEND or set it to one of"):
        backends.select_kernels(torch.device("cpu"))


# -- other file shapes, in-process (what expand_extends reads first) ------------------------------

@pytest.mark.parametrize(("content", "expected"), [
    (b"# nothing but a comment\n", "is empty (no keys)"),
    (b"- trainer\n- model\n", "holds a YAML list, not a mapping of sections"),
    (b"trainer:\n  max_steps: 3\x07\n", "is not YAML text: character '\\x07' is not allowed (line 2)"),
])
def test_other_unreadable_config_files(tmp_path, capsys, content, expected):
    config = tmp_path / "odd.yaml"
    config.write_bytes(content)
    with pytest.raises(ConfigError, match="config file") as info:
        expand_extends(["--config", str(config)])
    assert info.value.code == 2 and f"config file {config} {expected}" in str(info.value)
    assert capsys.readouterr().err == f"error: {info.value}\n"


def test_bad_base_named_by_extends_is_named(tmp_path):
    (tmp_path / "base.yaml").write_bytes(b"\xff\xfe")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'base.yaml'} is not UTF-8 text"):
        expand_extends([f"--config={tmp_path / 'child.yaml'}"])


def test_extends_cycle_is_a_parse_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    cycle = "configs extend each other in a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"
    with pytest.raises(ConfigError, match=cycle):
        expand_extends(["--config", str(tmp_path / "a.yaml")])


def test_checks_skip_sections_a_config_does_not_have():
    check_config(Namespace(trainer=Namespace(max_steps=5)))
