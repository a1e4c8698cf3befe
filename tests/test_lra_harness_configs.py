"""The default LRA configs parse to the harness's settings, and every overlay in
``configs/lra/variants/`` composes with the tasks it names and changes what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.cli import TrainCLI
from src.extends import expand_extends

ROOT = Path(__file__).resolve().parents[1]
LRA = ROOT / "configs" / "lra"
# task -> (max_length, pad_to) of the harness's arrays
HARNESS_LENGTHS = {"listops": (2000, 2048), "text": (1000, 1024), "retrieval": (4000, 4096),
                   "image": (1024, 1024), "pathfinder": (1024, 1024)}


@pytest.fixture(scope="module")
def parser():
    return TrainCLI(auto_configure_optimizers=False, run=False,
                    args=["--config", str(ROOT / "configs" / "quickstart.yaml")]).parser


def parsed(parser, *configs: Path):
    args = [arg for config in configs for arg in ("--config", str(config))]
    return parser.parse_args(expand_extends(args))


@pytest.mark.parametrize("task", list(HARNESS_LENGTHS))
def test_default_config_is_the_harness(parser, task):
    config = parsed(parser, LRA / f"{task}.yaml")
    data, model = config.data.init_args, config.model.init_args
    assert (data.max_length, data.pad_to, data.mean_over) == (*HARNESS_LENGTHS[task], "padded_length")
    recipe = (model.optimizer, model.adam_eps, model.weight_decay, model.schedule)
    assert recipe == ("adamw", 1e-6, 0.0, "onecycle")
    if task in ("image", "pathfinder"):
        assert data.pixel_tokens == "raw"
    if task == "image":
        assert data.grey_rounding == "tensorflow"
    if task == "listops":
        assert data.tokenization == "lra"
    if task == "text":
        assert data.val_source == "test"


# overlay -> (tasks it applies to, the dotted keys it changes and their values)
VARIANTS = {
    "listops_brackets": (["listops"], {"data.init_args.tokenization": "lra_2021"}),
    "text_4k": (["text"], {"data.init_args.max_length": 4000, "data.init_args.pad_to": 4096}),
    "text_holdout": (["text"], {"data.init_args.val_source": "train", "data.init_args.val_fraction": 0.1}),
    "all_pixels": (["image", "pathfinder"], {"data.init_args.pixel_tokens": "shifted"}),
    "real_token_mean": (list(HARNESS_LENGTHS), {"data.init_args.pad_to": None,
                                               "data.init_args.mean_over": "real_tokens"}),
    "warmup_linear": (list(HARNESS_LENGTHS), {"model.init_args.optimizer": "adam",
                                             "model.init_args.adam_eps": 1e-8,
                                             "model.init_args.schedule": "linear"}),
}


def test_every_variant_file_is_listed():
    assert {p.stem for p in (LRA / "variants").glob("*.yaml")} == set(VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_composes_with_its_tasks(parser, variant):
    tasks, changes = VARIANTS[variant]
    for task in tasks:
        config = parsed(parser, LRA / f"{task}.yaml", LRA / "variants" / f"{variant}.yaml")
        for key, value in changes.items():
            assert config[key] == value, (task, key)
        base = parsed(parser, LRA / f"{task}.yaml")
        untouched = {"trainer.max_steps", "model.init_args.encoder", "data.class_path"}
        assert all(config[key] == base[key] for key in untouched), task


def test_pathfinder_quickstart_generates_compacts_and_trains(tmp_path):
    """The Pathfinder quickstart end to end at toy size: it generates its images into an empty folder, trains
    on compacted batches with the 2-D position start, and tests (its accuracy is in docs/lra.md)."""
    data = "--data.init_args."
    encoder = "--model.init_args.encoder.init_args."
    done = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/lra/pathfinder_quickstart.yaml",
         f"{data}data_dir={tmp_path / 'pf'}", f"{data}cache_dir={tmp_path / 'cache'}",
         f"{data}generate_num=40", f"{data}generate_workers=1", f"{data}batch_size=4",
         f"{encoder}dim=16", f"{encoder}ffn_dim=32",
         f"{encoder}head_dim=8", "--model.init_args.head_hidden=16", "--model.init_args.warmup_steps=1",
         "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
         f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generating 40 images" in done.stdout + done.stderr
    assert "test/acc" in done.stdout
    run_dir = next((tmp_path / "logs" / "pathfinder_quickstart").glob("*/version_0"))
    config = (run_dir / "config.yaml").read_text()
    assert "compact_masked: true" in config and "position_init: sincos_2d" in config


def test_compacted_pathfinder_with_an_order_reading_attention_fails_before_any_step(tmp_path):
    import train

    with pytest.raises(SystemExit, match=r"compact_masked is true, but YOSOAttention reads the sequence"):
        train.build_cli(["--config", str(LRA / "pathfinder_quickstart.yaml"),
                         "--config", str(ROOT / "configs" / "attention" / "yoso_c_16.yaml"),
                         f"--data.init_args.data_dir={tmp_path / 'pf'}",
                         f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])
    assert not (tmp_path / "pf").exists()  # refused before generating anything
