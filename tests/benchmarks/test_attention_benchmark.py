"""The benchmark script runs end to end on a tiny size and writes its outputs (no timing asserts)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("attention_benchmark", ROOT / "benchmarks" / "attention.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_attention_names_parse_and_typos_fail():
    assert bench.parse_attention("yoso-32@reference") == {
        "kind": "yoso", "num_hashes": 32, "backend": "reference", "dtype": "float32"
    }
    assert bench.parse_attention("softmax-bf16")["dtype"] == "bfloat16"
    assert bench.parse_attention("yoso-16-bf16bwd") == {
        "kind": "yoso", "num_hashes": 16, "backend": None, "dtype": "float32",
        "backward_precision": "bfloat16",
    }
    assert bench.parse_attention("yoso-e")["expectation"] is True
    assert bench.parse_attention("yoso-c-16")["conv_window"] == 31
    with pytest.raises(ValueError, match="unknown attention"):
        bench.parse_attention("yoso-many")


@pytest.mark.slow
def test_tiny_run_writes_csv_table_and_plot(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "benchmarks/attention.py", "--lengths", "32", "64", "--heads", "2",
         "--head-dim", "8", "--repeats", "1", "--attentions", "softmax", "yoso-e", "yoso-4@reference",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert all(row["status"] == "ok" and float(row["median_s"]) > 0 for row in rows)
    assert "| yoso-4@reference |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000
