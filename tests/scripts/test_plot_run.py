"""scripts/plot_run.py: the curves of one run, merged over a resumed run's event files."""

from __future__ import annotations

import time

from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from scripts.plot_run import main, read_curves


def write_events(folder, points: dict[str, list[tuple[int, float]]]) -> None:
    writer = SummaryWriter(str(folder))
    for tag, values in points.items():
        for step, value in values:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_a_resumed_run_is_one_curve_with_the_later_values(tmp_path, capsys):
    run = tmp_path / "version_0"
    write_events(run, {"val/acc": [(100, 0.5), (200, 0.55)], "train/loss": [(50, 0.7), (100, 0.69)]})
    time.sleep(0.05)  # the second process's file is the newer one
    write_events(run, {"val/acc": [(200, 0.6), (300, 0.65)], "train/loss": [(150, 0.6)]})
    curves = read_curves(run, ["val/acc", "train/loss"])
    assert [(s, round(v, 4)) for s, v in curves["val/acc"]] == [(100, 0.5), (200, 0.6), (300, 0.65)]
    assert [s for s, _ in curves["train/loss"]] == [50, 100, 150]
    out = tmp_path / "curve.png"
    assert main([str(run), "--reference", "val/acc=0.5", "--out", str(out)]) == 0
    assert "val/acc: 3 points, last 0.6500 at step 300" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size[0] > image.size[1] > 100  # two panels side by side


def test_a_missing_tag_or_folder_is_named(tmp_path, capsys):
    write_events(tmp_path / "run", {"val/acc": [(1, 0.5)]})
    assert main([str(tmp_path / "run"), "--tags", "val/f1", "--out", str(tmp_path / "x.png")]) == 2
    assert "no scalar 'val/f1'" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no events.out.tfevents" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
