"""Growing a trained position table (``extend_positions_to``): copy initialisation, then training."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from src.models.base_module import load_encoder_weights
from src.models.components.attention import YOSOAttention
from src.models.components.encoder import TransformerEncoder, repeat_position_rows
from src.models.lra_module import SequenceClassifier


def encoder(max_length: int, offset: int = 0) -> TransformerEncoder:
    return TransformerEncoder(vocab_size=11, max_length=max_length, dim=16, depth=1, num_heads=2, head_dim=8,
                              ffn_dim=32, dropout=0.0, position_offset=offset,
                              attention=partial(YOSOAttention, hash_code_len=6, num_hashes=4))


def test_rows_repeat_the_trained_ones_and_keep_the_offset_rows():
    table = torch.arange(2 + 3, dtype=torch.float32).unsqueeze(-1)  # 2 offset rows, 3 positions
    grown = repeat_position_rows(table, 7, offset=2)
    assert grown.squeeze(-1).tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 2]
    with pytest.raises(ValueError, match="cannot grow a table of 3 positions to 2"):
        repeat_position_rows(table, 2, offset=2)


def saved_classifier(tmp_path, max_length: int = 64) -> tuple[SequenceClassifier, str]:
    torch.manual_seed(0)
    source = SequenceClassifier(encoder(max_length), num_classes=2)
    with torch.no_grad():  # a "trained" table: distinct rows
        source.encoder.position_embedding.weight.normal_()
    path = tmp_path / "short.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    return source, str(path)


def test_a_64_position_table_grows_to_256_with_its_first_rows_unchanged(tmp_path):
    source, path = saved_classifier(tmp_path)
    trained = source.encoder.position_embedding.weight.detach()
    target = encoder(256)
    with pytest.raises(ValueError, match="shape mismatch: position_embedding.weight"):
        load_encoder_weights(target, path)  # without the option: a clear shape error, as before
    load_encoder_weights(target, path, extend_positions=True)
    grown = target.position_embedding.weight.detach()
    assert grown.shape == (256, 16)
    assert torch.equal(grown[:64], trained)
    assert torch.equal(grown[64:128], trained) and torch.equal(grown[192:], trained)
    for name, value in source.encoder.state_dict().items():
        if name != "position_embedding.weight":
            assert torch.equal(target.state_dict()[name], value), name


def test_a_256_token_batch_trains_from_the_extended_checkpoint(tmp_path):
    source, path = saved_classifier(tmp_path)
    model = SequenceClassifier(encoder(256), num_classes=2, init_from=path, extend_positions_to=256,
                               learning_rate=1e-2, warmup_steps=0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 11, (4, 256), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones(4, 256, dtype=torch.bool),
             "labels": (ids[:, 200] > 5).long()}
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DataLoader([batch], batch_size=None))
    table = model.encoder.position_embedding.weight.detach()
    assert torch.isfinite(table).all() and trainer.global_step == 2
    trained = source.encoder.position_embedding.weight.detach()
    assert not torch.equal(table[:64], trained)  # it trained (loaded first, then updated)
    assert (table[:64] - trained).abs().max() < 0.1  # ... from the loaded rows, not from scratch


def test_the_option_is_checked_against_the_encoder_and_init_from(tmp_path):
    _, path = saved_classifier(tmp_path)
    with pytest.raises(ValueError, match="set model.init_args.init_from too"):
        SequenceClassifier(encoder(256), num_classes=2, extend_positions_to=256)
    with pytest.raises(ValueError, match="max_length is 128: set data.init_args.max_length 256"):
        SequenceClassifier(encoder(128), num_classes=2, init_from=path, extend_positions_to=256)
    with pytest.raises(ValueError, match="already holds 64 positions"):
        load_encoder_weights(encoder(64), path, extend_positions=True)
