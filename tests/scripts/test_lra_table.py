"""scripts/lra_table.py on hand-written event files: latest finished version, cells, averages, figure."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lra_table", ROOT / "scripts" / "lra_table.py")
lra_table = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lra_table  # dataclasses look their module up there
_spec.loader.exec_module(lra_table)


def write_run(folder: Path, scalars: dict[str, list[tuple[int, float, float]]]) -> None:
    """Events with (step, value, seconds after the writer started) per tag."""
    writer = SummaryWriter(str(folder))
    start = time.time()
    for tag, points in scalars.items():
        for step, value, after in points:
            writer.add_scalar(tag, value, step, walltime=start + after)
    writer.close()


def resources(minutes: float, mib: float, gpu: float = 0.0) -> dict[str, list[tuple[int, float, float]]]:
    return {"resources/train_time_s": [(10, 60 * minutes / 2, 1), (20, 60 * minutes, 2)],
            "resources/peak_memory_mib": [(20, mib, 2)], "resources/peak_memory_is_gpu": [(20, gpu, 2)]}


def test_table_takes_the_latest_finished_run_and_fills_every_cell(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs / "listops/softmax/version_0", {"test/acc": [(20, 0.30, 3)], **resources(10, 1000)})
    write_run(logs / "listops/softmax/version_1", {"test/acc": [(20, 0.35, 3)], **resources(20, 1500)})
    write_run(logs / "listops/softmax/version_2", {"val/acc": [(10, 0.9, 1)]})  # unfinished: ignored
    # no ResourceMonitor: time = last train/val event - first event (~130 s), no memory
    write_run(logs / "text/softmax/version_0", {"train/loss": [(1, 0.7, 10)], "val/acc": [(5, 0.6, 130)],
                                                 "test/acc": [(5, 0.7125, 200)]})
    accuracies = {"listops": 0.40, "text": 0.60, "retrieval": 0.80, "image": 0.30, "pathfinder": 0.70}
    for task, acc in accuracies.items():
        write_run(logs / task / "yoso_c_16/version_0",
                  {"val/acc": [(10, acc - 0.01, 30)], "test/acc": [(20, acc, 40)],
                   **resources(6, 300, gpu=1.0)})
    write_run(logs / "quickstart/softmax/version_0", {"test/acc": [(1, 0.99, 1)]})  # not an LRA task

    assert lra_table.main([str(logs), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "lra_table.md").read_text()
    lines = table.splitlines()
    assert "| Attention | ListOps | Text | Retrieval | Image | Pathfinder | Average | Time (min) " \
           "| Peak memory (MiB) |" in lines
    assert "| softmax (reference harness) | 37.10 | 65.02 | 79.35 | 38.20 | 74.16 | 58.77 | – | – |" in lines
    # 20 min + 130 s = 22.17 min (* from events); memory: the only measured one
    assert "| softmax | 35.00 | 71.25 | – | – | – | – | 22.2* | 1500 RSS |" in lines
    # average of 40, 60, 80, 30, 70 = 56.00; 5 x 6 min
    assert "| yoso_c_16 | 40.00 | 60.00 | 80.00 | 30.00 | 70.00 | 56.00 | 30.0 | 300 GPU |" in lines
    assert "| softmax | 20.0 / 1500 RSS | 2.2* / – | – | – | – |" in lines
    assert "| yoso_c_16 |" + " 6.0 / 300 GPU |" * 5 in lines
    assert "listops/softmax/version_1" in table and "version_2" not in table and "0.99" not in table
    assert (tmp_path / "out" / "lra_accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_runs_gives_the_reference_row_only(tmp_path, capsys):
    assert lra_table.main([str(tmp_path)]) == 0
    table = (tmp_path / "lra_table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| softmax (reference harness) |") and len(rows) == 3  # two headers + reference
    assert "no finished runs" in capsys.readouterr().err


def test_a_resumed_runs_curve_counts_the_time_before_the_resume(tmp_path):
    """Validation points are placed at the training time logged with them (one step later, as
    Lightning numbers them), not at the new process's clock."""
    logs = tmp_path / "logs"
    write_run(logs / "listops/softmax/version_1",
              {"val/acc": [(1999, 0.36, 5), (2499, 0.37, 600)], "test/acc": [(2500, 0.37, 610)],
               "resources/train_time_s": [(2000, 4000.0, 5), (2500, 4600.0, 600)]})
    write_run(logs / "listops/yoso_c_16/version_0", {"val/acc": [(10, 0.3, 30)], "test/acc": [(10, 0.3, 40)]})
    runs = lra_table.find_runs(logs)
    curve = runs[("listops", "softmax")].val_curve  # event files store float32
    assert [s for s, _ in curve] == [4000.0, 4600.0] and [round(a, 4) for _, a in curve] == [0.36, 0.37]
    assert runs[("listops", "softmax")].train_time_s == 4600.0
    (seconds, acc), = runs[("listops", "yoso_c_16")].val_curve  # no train_time_s: wall time
    assert abs(seconds - 30) < 1 and abs(acc - 0.3) < 1e-6
