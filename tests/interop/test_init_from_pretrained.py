"""``init_from`` like ``from_pretrained``: a transformers YOSO folder or our MLM checkpoint starts a
GLUE run with no encoder in any config (architecture, length and tokenizer come from the source),
and a config that states another size is refused, naming both values and where each came from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

import train  # noqa: E402
from src.cli_errors import ConfigError  # noqa: E402
from src.data.glue.glue_datamodule import GlueDataModule  # noqa: E402
from src.data.tokenizer import TOKENIZER_KEY, train_tokenizer  # noqa: E402
from src.interop.hf_yoso import write_tokenizer  # noqa: E402
from tests.test_mlm_glue import FIXTURES, QUIET, mlm_overrides  # noqa: E402
from tests.test_train import ROOT  # noqa: E402

HF_LENGTH = 48
RTE = str(ROOT / "configs" / "glue" / "rte.yaml")
# One process for the three runs: the imports cost more than the runs.
DRIVER = """
import json, sys
import train
for name, args in json.loads(sys.argv[1]).items():
    print("METRICS", name, json.dumps(train.main(args)), flush=True)
"""


def make_hf_folder(folder: Path) -> None:
    """A random tiny YosoForMaskedLM (expectation mode, one segment) and a BPE tokenizer beside it."""
    rows = [line.split("\t") for line in (FIXTURES / "RTE" / "train.tsv").read_text().splitlines()[1:]]
    tokenizer = train_tokenizer([f"{row[1]} {row[2]}" for row in rows] * 3, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = transformers.YosoConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=HF_LENGTH, use_expectation=True,
        pad_token_id=tokenizer.pad_id,
    )
    transformers.YosoForMaskedLM(config).save_pretrained(folder)
    write_tokenizer(tokenizer.tokenizer, folder, HF_LENGTH)


def glue_args(source: Path, tmp: Path, name: str) -> list[str]:
    """RTE from ``source`` with no encoder overlay; the encoder as loaded is written to ``<name>.pt``."""
    callback = {"class_path": "tests.interop.run_callbacks.SaveEncoderAtFitStart",
                "init_args": {"path": str(tmp / f"{name}.pt")}}
    return [
        "--config", RTE, f"--model.init_args.init_from={source}",
        f"--data.init_args.data_dir={FIXTURES}", f"--data.init_args.cache_dir={tmp / 'cache'}",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", *QUIET,
        "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--model.init_args.warmup_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp / 'logs' / name}",
        "--trainer.callbacks+=" + json.dumps(callback),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("init_from")
    folder = tmp / "yoso-hf"
    make_hf_folder(folder)
    (tmp / "mlm").mkdir()
    checkpoint = tmp / "mlm" / "logs" / "mlm_quickstart" / "yoso_c_16" / "version_0" / "checkpoints"
    checkpoint /= "last.ckpt"
    cases = {
        "mlm": ["--config", str(ROOT / "configs" / "mlm" / "quickstart.yaml"), *mlm_overrides(tmp / "mlm")],
        "from_ckpt": glue_args(checkpoint, tmp, "from_ckpt"),
        "from_hf": glue_args(folder, tmp, "from_hf"),
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = {line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2])
               for line in done.stdout.splitlines() if line.startswith("METRICS ")}
    return SimpleNamespace(tmp=tmp, folder=folder, checkpoint=checkpoint, metrics=metrics)


def run_folder(runs: SimpleNamespace, name: str) -> Path:
    return next((runs.tmp / "logs" / name).glob("glue_rte/*/version_0"))


def saved_config(runs: SimpleNamespace, name: str) -> dict:
    return yaml.safe_load((run_folder(runs, name) / "config.yaml").read_text())


def test_glue_from_a_transformers_folder_takes_its_encoder_and_tokenizer(runs: SimpleNamespace) -> None:
    assert "test/acc" in runs.metrics["from_hf"]
    loaded = torch.load(runs.tmp / "from_hf.pt", weights_only=True)
    theirs = load_file(str(runs.folder / "model.safetensors"))
    names = {
        "token_embedding.weight": "yoso.embeddings.word_embeddings.weight",
        "position_embedding.weight": "yoso.embeddings.position_embeddings.weight",
        "segment_embedding.weight": "yoso.embeddings.token_type_embeddings.weight",
        "embedding_norm.bias": "yoso.embeddings.LayerNorm.bias",
        "layers.1.attention.query.weight": "yoso.encoder.layer.1.attention.self.query.weight",
        "layers.1.ffn.3.weight": "yoso.encoder.layer.1.output.dense.weight",
    }
    for ours, name in names.items():
        assert torch.equal(loaded[ours], theirs[name]), ours
    config = saved_config(runs, "from_hf")
    encoder = config["model"]["init_args"]["encoder"]["init_args"]
    assert {k: encoder[k] for k in ("dim", "depth", "num_heads", "ffn_dim", "num_segments", "norm_first",
                                    "embedding_norm", "position_offset")} == {
        "dim": 16, "depth": 2, "num_heads": 2, "ffn_dim": 32, "num_segments": 1, "norm_first": False,
        "embedding_norm": True, "position_offset": 2}
    assert encoder["attention"]["init_args"]["expectation"] is True  # use_expectation
    data = config["data"]["init_args"]
    assert (data["max_length"], data["num_segments"]) == (HF_LENGTH, 1)
    last = torch.load(run_folder(runs, "from_hf") / "checkpoints" / "last.ckpt", weights_only=True)
    assert last[TOKENIZER_KEY] == Tokenizer.from_file(str(runs.folder / "tokenizer.json")).to_str()


def test_glue_from_our_mlm_checkpoint_takes_its_encoder(runs: SimpleNamespace) -> None:
    assert "test/acc" in runs.metrics["from_ckpt"]
    loaded = torch.load(runs.tmp / "from_ckpt.pt", weights_only=True)
    state = torch.load(runs.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert set(loaded) == {k.removeprefix("encoder.") for k in state if k.startswith("encoder.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[f"encoder.{key}"]), key
    config = saved_config(runs, "from_ckpt")
    encoder = config["model"]["init_args"]["encoder"]["init_args"]
    assert (encoder["dim"], encoder["head_dim"]) == (16, 8)
    assert encoder["attention"]["init_args"]["num_hashes"] == 16  # the MLM run's m: GLUE's configs state none
    assert config["data"]["init_args"]["max_length"] == 32  # the MLM run's length


def refusal(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(ConfigError):
        train.build_cli(list(args))
    return capsys.readouterr().err


def test_a_config_stating_another_size_is_refused_naming_both(runs: SimpleNamespace, capsys) -> None:
    small = ROOT / "configs" / "glue" / "encoders" / "small.yaml"
    said = refusal(capsys, "--config", RTE, "--config", str(small),
                   f"--model.init_args.init_from={runs.folder}", "--data.init_args.max_length=64")
    assert said.startswith("error: ") and said.count("\n") == 1, said
    assert (f"model.init_args.encoder.init_args.dim = 512 ({small}) but init_from has 16 "
            f"({runs.folder / 'config.json'}: hidden_size)") in said
    config_json = runs.folder / "config.json"
    assert f"num_segments = 2 ({small}) but init_from has 1 ({config_json}: type_vocab_size)" in said
    assert (f"data.init_args.max_length = 64 (the command line) but init_from has {HF_LENGTH} "
            f"({runs.folder / 'config.json'}: max_position_embeddings)") in said

    said = refusal(capsys, "--config", RTE, f"--model.init_args.init_from={runs.checkpoint}",
                   "--model.init_args.encoder.init_args.num_heads=4")
    assert (f"model.init_args.encoder.init_args.num_heads = 4 (the command line) but init_from has 2 "
            f"({runs.checkpoint}: hyper_parameters encoder.init_args.num_heads)") in said


def test_a_folder_without_tokenizer_or_config_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "yoso"}))
    with pytest.raises(FileNotFoundError, match="holds no tokenizer .*--data.init_args.tokenizer"):
        GlueDataModule("rte", data_dir=str(FIXTURES), tokenizer_from=str(tmp_path))
    said = refusal(capsys, "--config", RTE, f"--model.init_args.init_from={tmp_path / 'absent'}")
    assert "does not exist: give a checkpoint of this project (.ckpt) or a transformers YOSO folder" in said


def test_print_config_shows_the_encoder_the_source_brings(runs: SimpleNamespace, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        train.build_cli(["--config", RTE, f"--model.init_args.init_from={runs.folder}", "--print_config"])
    assert stopped.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    encoder = printed["model"]["init_args"]["encoder"]["init_args"]
    assert (encoder["dim"], encoder["depth"], encoder["num_heads"], encoder["ffn_dim"]) == (16, 2, 2, 32)
    assert encoder["num_segments"] == 1  # max_length is linked from the data (below)
    assert printed["data"]["init_args"]["max_length"] == HF_LENGTH
