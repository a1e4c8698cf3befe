"""Bad input gets a clear answer (the table in docs/robustness.md); each case once, in-process."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from src.callbacks.finite_loss import FiniteLossCheck, NonFiniteLossError
from src.checkpoints import check_resume_checkpoint
from src.cli import TrainCLI, follow_default_root_dir
from src.cli_errors import explain
from src.models.base_module import load_encoder_weights
from src.models.components.attention import YOSOAttention
from src.models.components.encoder import TransformerEncoder
from src.models.lra_module import SequenceClassifier
from tests.test_train import ROOT


def parse_error(*args: str) -> str:
    """The message the CLI prints for ``args`` (parsed in-process, errors raised instead of exiting)."""
    argv = ["--config", str(ROOT / "configs" / "quickstart.yaml"), *args]  # the CLI expands `extends`
    with pytest.raises(Exception) as info:  # noqa: PT011 (jsonargparse's ArgumentError)
        TrainCLI(auto_configure_optimizers=False, run=False, args=argv,
                 parser_kwargs={"exit_on_error": False})
    return str(info.value)


def test_config_key_typo_names_the_key_its_section_and_the_fix():
    message = parse_error("--data.init_args.max_lenght=5")
    first = message.splitlines()[0]
    expected = "unknown key 'max_lenght' in data.init_args (src.data.lra.listops_datamodule."
    assert first.startswith(expected), first
    assert "did you mean 'max_length'?" in first and "Valid choices: data_dir," in first


def test_nested_key_typo_in_the_attention():
    first = parse_error("--model.init_args.encoder.init_args.attention.init_args.num_hash=4").splitlines()[0]
    assert first.startswith(
        "unknown key 'num_hash' in model.init_args.encoder.init_args.attention.init_args "
        "(src.models.components.attention.YOSOAttention); did you mean 'num_hashes'?"), first


def test_unknown_attention_class_lists_the_attentions():
    first = parse_error("--model.init_args.encoder.init_args.attention.class_path="
                        "src.models.components.attention.YosoAttention").splitlines()[0]
    assert "unknown class 'src.models.components.attention.YosoAttention'" in first
    assert "did you mean 'src.models.components.attention.YOSOAttention'?" in first
    for name in ("SoftmaxAttention", "NystromAttention", "PerformerAttention", "LinformerAttention"):
        assert name in first
    assert "MultiHeadSelfAttention" not in first


def test_other_errors_pass_through_unchanged():
    assert explain("Parser key \"x\": something else") == "Parser key \"x\": something else"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"head_dim": 0}, "head_dim must be an int >= 1"),
    ({"num_heads": 0}, "num_heads must be an int >= 1"),
    ({"hash_code_len": 0}, r"hash_code_len must be an int in \[1, 16\]"),
    ({"hash_code_len": 17}, r"hash_code_len must be an int in \[1, 16\]"),
    ({"num_hashes": 0}, "num_hashes must be an int >= 1"),
    ({"hashing": "lsh"}, "hashing must be one of"),
])
def test_yoso_options_out_of_range_fail_at_build(kwargs, match):
    options = {"num_heads": 2, "head_dim": 8, "hash_code_len": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        YOSOAttention(options.pop("num_heads"), options.pop("head_dim"), **options)


def tiny_classifier(dim: int = 16, vocab: int = 12) -> SequenceClassifier:
    attention = functools.partial(YOSOAttention, hash_code_len=4, num_hashes=4)
    encoder = TransformerEncoder(vocab, 10, attention, dim=dim, depth=1, num_heads=2, head_dim=8, ffn_dim=32)
    return SequenceClassifier(encoder, num_classes=3, warmup_steps=0)


def test_sequence_longer_than_the_model_maximum():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="input length 11 exceeds the encoder's max_length 10"):
        model(torch.ones(1, 11, dtype=torch.long), torch.ones(1, 11, dtype=torch.bool))


def test_all_padding_example_gives_finite_outputs_and_loss():
    torch.manual_seed(0)
    model = tiny_classifier()
    ids = torch.tensor([[3, 4, 5, 0], [0, 0, 0, 0]])
    mask = ids != 0
    logits = model(ids, mask)
    assert torch.isfinite(logits).all()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1, 2])}
    loss, _, _ = model.step_outputs(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def save_training_checkpoint(model: nn.Module, path: Path) -> Path:
    state = {"state_dict": model.state_dict(), "optimizer_states": [], "loops": {}, "global_step": 3}
    torch.save(state, path)
    return path


def test_resume_checkpoint_checks(tmp_path):
    model = tiny_classifier()
    good = save_training_checkpoint(model, tmp_path / "good.ckpt")
    check_resume_checkpoint(good, model)  # fits: no error

    other = save_training_checkpoint(tiny_classifier(dim=24), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="another shape") as info:
        check_resume_checkpoint(other, model)
    assert re.search(r"shape mismatch: encoder\.\S+: checkpoint \((\d+, )?24,?\) vs model \((\d+, )?16,?\)",
                     str(info.value)), str(info.value)

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(text))} is not a readable checkpoint"):
        check_resume_checkpoint(text, model)

    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        check_resume_checkpoint(truncated, model)

    weights_only = tmp_path / "weights.pt"
    torch.save({"state_dict": model.state_dict()}, weights_only)
    with pytest.raises(ValueError, match="no training state .*model.init_from"):
        check_resume_checkpoint(weights_only, model)


def test_init_from_a_file_that_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "readme.ckpt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_encoder_weights(tiny_classifier().encoder, text)
    other = save_training_checkpoint(tiny_classifier(dim=24), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"shape mismatch: final_norm.bias: checkpoint \(24,\) vs model"):
        load_encoder_weights(tiny_classifier().encoder, other)


class NaNAtStep(pl.LightningModule):
    """A one-parameter model whose loss is NaN from optimizer step ``bad`` on."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.bad = bad

    def training_step(self, batch, batch_idx):
        loss = (self.weight * batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step >= self.bad else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(16, 1)), batch_size=2)


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="s{step}",
                                  auto_insert_metric_name=False)
    trainer = pl.Trainer(max_steps=8, callbacks=[FiniteLossCheck(), checkpoints], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(NaNAtStep(bad=5))
    message = str(info.value)
    assert "training loss is nan at step 6" in message  # the 6th optimizer step produced it
    assert f"Last good checkpoint: {tmp_path / 's4.ckpt'}." in message
    # the check runs before the checkpoint callbacks: the NaN step 6 was never saved
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["s2.ckpt", "s4.ckpt"]


def test_default_root_dir_moves_the_logs_and_a_conflict_is_an_error(tmp_path):
    def config(save_dir: str, root: str | None) -> Namespace:
        logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                           init_args=Namespace(save_dir=save_dir, name="x"))
        return Namespace(trainer=Namespace(default_root_dir=root, logger=logger))

    moved = config("logs", str(tmp_path))
    follow_default_root_dir(moved)
    assert moved.trainer.logger.init_args.save_dir == str(tmp_path)
    inside = config(str(tmp_path / "tb"), str(tmp_path))
    follow_default_root_dir(inside)
    assert inside.trainer.logger.init_args.save_dir == str(tmp_path / "tb")
    unchanged = config("elsewhere", None)
    follow_default_root_dir(unchanged)
    assert unchanged.trainer.logger.init_args.save_dir == "elsewhere"
    with pytest.raises(SystemExit, match="disagree"):
        follow_default_root_dir(config("/somewhere/else", str(tmp_path)))
